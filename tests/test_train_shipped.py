"""scripts/train_shipped.py: the commands it runs, and `--out` leaving every shipped file alone."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("train_shipped", ROOT / "scripts" / "train_shipped.py")
train_shipped = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_shipped)


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_every_recipe_gets_the_same_compute_and_a_grid_solver_of_its_process():
    ddpm = train_shipped.train_command("dit_t_nash_k5", 1)
    flow = train_shipped.train_command("sit_t_nash_k5", 1)
    for name in ("--steps", "--batch", "--lr", "--ema", "--data"):
        assert flag(ddpm, name) == flag(flow, name)
    assert flag(ddpm, "--sample-sampler") == "ddim"
    assert flag(flow, "--sample-sampler") == "heun"
    assert train_shipped.process_of("sit_t_minsnr") == "flow"
    assert train_shipped.process_of("dit_t_dtr") == "ddpm"


def test_out_moves_the_runs_and_the_default_keeps_them(tmp_path):
    default = train_shipped.train_command("dit_t", 2)
    assert flag(default, "--out") == str(Path("runs") / "shipped" / "dit_t" / "seed2")
    moved = train_shipped.train_command("dit_t", 2, runs=tmp_path / "rerun")
    assert flag(moved, "--out") == str(tmp_path / "rerun" / "dit_t" / "seed2")
    assert shlex.join(moved).startswith("zoo train dit_t ")


def test_out_touches_no_shipped_file(tmp_path, monkeypatch):
    """A finished run under --out is not retrained, and nothing is shipped, carded or evaluated."""
    (tmp_path / "dit_t" / "seed1" / "final").mkdir(parents=True)
    calls = []
    monkeypatch.setattr(train_shipped, "run", lambda command, threads: calls.append(command))
    monkeypatch.setattr(train_shipped, "ship", lambda *a: pytest.fail("--out must not ship"))
    monkeypatch.setattr(train_shipped, "write_shipped_cards", lambda *a: pytest.fail("no cards"))
    manifest = (train_shipped.PRETRAINED / "shipped.json").read_bytes()
    code = train_shipped.main(["--out", str(tmp_path), "--recipes", "dit_t", "--seeds", "1", "--jobs", "1"])
    assert code == 0
    assert calls == []  # no classifier, no training (done already), no leaderboard
    assert (train_shipped.PRETRAINED / "shipped.json").read_bytes() == manifest


def test_an_unknown_recipe_fails_before_any_training(tmp_path, monkeypatch):
    monkeypatch.setattr(train_shipped, "run", lambda *a: pytest.fail("nothing may run"))
    with pytest.raises(KeyError, match="nosuch"):  # the registries' UnknownNameError
        train_shipped.main(["--out", str(tmp_path), "--recipes", "dit_t_nosuch", "--seeds", "0"])


def test_steps_sets_every_recipes_budget_and_an_interrupted_run_resumes(tmp_path, monkeypatch):
    command = train_shipped.train_command("sit_t_p4", 0, "mnist", tmp_path, steps=16000)
    assert flag(command, "--steps") == "16000" and flag(command, "--ckpt-every") == "1000"
    assert flag(train_shipped.train_command("sit_t_p4", 0, "mnist"), "--steps") == "8000"  # the default
    calls = []
    monkeypatch.setattr(train_shipped, "run", lambda command, threads: calls.append(command))
    argv = ["--data", "mnist", "--out", str(tmp_path), "--recipes", "sit_t_p4", "--seeds", "0", "--jobs", "1"]
    assert train_shipped.main([*argv, "--steps", "16000"]) == 0
    assert flag(calls[-1], "--steps") == "16000" and "--resume" not in calls[-1]  # a fresh run
    checkpoints = tmp_path / "sit_t_p4" / "seed0" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "step-00003000.pt").write_bytes(b"")
    assert train_shipped.main([*argv, "--steps", "16000"]) == 0
    assert calls[-1][-1] == "--resume" and flag(calls[-1], "--steps") == "16000"  # continues it
    (tmp_path / "sit_t_p4" / "seed0" / "final").mkdir()
    assert train_shipped.main([*argv, "--steps", "16000"]) == 0 and len(calls) == 2  # done: not rerun
