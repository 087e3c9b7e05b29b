"""The command line tells the truth: --help shows defaults, defaults agree, outputs land where the user runs
it, `zoo affinity` is reproducible."""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

import pytest
import torch

from zoo.card import use_snippet
from zoo.cli import build_parser, main
from zoo.cli.affinity import run as run_affinity
from zoo.eval import leaderboard
from zoo.eval.leaderboard import LeaderboardSettings
from zoo.model import DiffusionModel
from zoo.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["list", "info", "convert", "push", "routing", "affinity", "demo", "train", "sample", "encode"]
COMMANDS += ["leaderboard", "fid"]


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser([command])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_shows_every_default(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    parser = _subparser(command)
    options = [
        a
        for a in parser._actions
        if a.option_strings and a.default is not argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)
    ]
    assert options, command
    for action in options:  # each option's own help entry, as --help prints it, ends with its default
        entry = " ".join(parser._get_formatter()._format_action(action).split())
        assert entry.endswith(f"(default: {action.default})"), (command, entry)
    assert text.count("(default: ") >= len(options)  # and --help prints them all


def test_guidance_defaults_agree_across_commands():

    expected = inspect.signature(DiffusionModel.sample).parameters["guidance"].default
    assert expected == 1.0
    assert _subparser("sample").get_default("cfg") == expected
    assert _subparser("leaderboard").get_default("cfg") == expected
    assert LeaderboardSettings().cfg == expected and TrainConfig(model="x").sample_cfg == expected
    assert f"guidance={expected}" in use_snippet("dit_t.digits")


def test_leaderboard_writes_into_the_current_directory_by_default(tmp_path, monkeypatch):

    def listing(folder: Path) -> dict[str, float]:
        return {str(p): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}

    before = {name: listing(ROOT / name) for name in ("zoo", "benchmarks")}
    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser()
    leaderboard.add_leaderboard_arguments(parser)
    args = parser.parse_args(["--models", "dit_t", "--samples", "10", "--steps", "2", "--batch", "10"])
    assert args.out == "leaderboard" and not Path(args.out).is_absolute()
    assert leaderboard.main_from_args(args) == 0
    written = sorted(p.name for p in (tmp_path / "leaderboard").iterdir())
    assert written == ["leaderboard_digits.json", "leaderboard_digits.md", "samples_dit_t.digits.png"]
    payload = json.loads((tmp_path / "leaderboard" / "leaderboard_digits.json").read_text())
    assert payload["results"][0]["protocol"]["num_samples"] == 10
    assert {name: listing(ROOT / name) for name in ("zoo", "benchmarks")} == before  # nothing in the repo


def _affinity(tmp_path: Path, seed: int, name: str) -> torch.Tensor:

    parser = _subparser("affinity")
    args = parser.parse_args(
        ["local-dir:" + str(ROOT / "zoo/pretrained/dit_t.digits"), "--batches", "1", "--batch", "6"]
        + ["--group", "250", "--seed", str(seed), "--no-progress", "--out", str(tmp_path / name)]
    )
    assert run_affinity(args) == 0
    record = json.loads((tmp_path / name / "affinity.json").read_text())
    assert record["command"].startswith("zoo affinity local-dir:") and f"--seed {seed}" in record["command"]
    return torch.tensor(record["matrix"])


def test_affinity_is_reproducible_for_a_seed_and_changes_with_it(tmp_path):
    first, again, other = (_affinity(tmp_path, s, n) for s, n in ((0, "a"), (0, "b"), (1, "c")))
    assert first.shape == (4, 4)
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-3
    torch.testing.assert_close(first.diagonal(), torch.ones(4, dtype=first.dtype))
