"""The shipped digits models, the leaderboard's protocol bookkeeping and the demo."""

import json
import statistics

import numpy as np
import pytest
import torch

import zoo
from zoo.cli.demo import run_demo
from zoo.eval import leaderboard
from zoo.hub import PACKAGE_WEIGHTS
from zoo.hub.shipped import shipped_entries
from zoo.layout import sha256_of

SHIPPED = shipped_entries()
needs_shipped = pytest.mark.skipif(not SHIPPED, reason="no shipped models (run scripts/train_shipped.py)")


@needs_shipped
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_weights_load_through_pretrained_and_match_their_sha256(name):
    entry = SHIPPED[name]
    recipe, tag = name.split(".")
    assert (entry["arch"], entry["tag"], entry["file"]) == (recipe, tag, name)
    folder = PACKAGE_WEIGHTS / entry["file"]
    assert sha256_of(folder / "model.safetensors") == entry["sha256"]
    model = zoo.create(name, pretrained=True)
    size = {"digits": 8, "mnist": 28}[tag]
    assert model.sample_shape == (1, size, size) and model.num_classes == 10
    from safetensors.torch import load_file

    stored = load_file(str(folder / "model.safetensors"))
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, stored[key]), key
    assert entry["command"].startswith(f"zoo train {recipe} ")


@needs_shipped
def test_leaderboard_writes_json_and_markdown_with_protocols(tmp_path):
    name = sorted(n for n in SHIPPED if n.endswith(".digits"))[0]
    settings = leaderboard.LeaderboardSettings(samples=20, steps=2, kid_subsets=3)
    payload = leaderboard.run_leaderboard(
        settings, out=tmp_path, names=[name], tag="test", npz_dir=tmp_path / "npz"
    )
    with np.load(tmp_path / "npz" / f"{name}.npz") as npz:
        assert npz["arr_0"].shape == (20, 8, 8, 3) and npz["arr_0"].dtype == np.uint8
    written = json.loads((tmp_path / "leaderboard_test.json").read_text())
    (row,) = written["results"]
    protocol = row["protocol"]
    assert protocol["model"] == name and protocol["weights_sha256"] == SHIPPED[name]["sha256"]
    assert (protocol["sampler"], protocol["steps"], protocol["num_samples"], protocol["seed"]) == (
        "ddim",
        2,
        20,
        0,
    )
    assert protocol["extractor"] == "digits_classifier" and len(protocol["extractor_sha256"]) == 64
    assert protocol["reference"].startswith("digits:test")
    # metrics on the classifier's features are named so (issue 19)
    assert 0.0 <= row["precision_classifier"] <= 1.0 and 1.0 <= row["inception_score_classifier"] <= 10.0
    assert row["fid_classifier"] > 0 and "fid" not in row
    assert (tmp_path / f"samples_{name}.png").is_file()
    markdown = (tmp_path / "leaderboard_test.md").read_text()
    assert name in markdown
    # a row without its protocol is never shown
    payload["results"].append({"model": "unverified.digits", "fid": 0.1})
    assert "unverified" not in leaderboard.render_markdown(payload)
    assert "unverified" not in leaderboard.format_rows(payload["results"])


def test_seed_summary_is_the_mean_and_sample_std_at_each_recipes_last_step():
    curves = [
        {"recipe": "a", "seed": s, "step": step, **{m: float(s + step) for m in leaderboard.METRIC_COLUMNS}}
        for s in range(3)
        for step in (10, 20)
    ]
    curves.append({"recipe": "b", "seed": 0, "step": 5, **{m: 1.0 for m in leaderboard.METRIC_COLUMNS}})
    summary = {entry["recipe"]: entry for entry in leaderboard.summarize_seeds(curves)}
    assert summary["a"]["step"] == 20 and summary["a"]["seeds"] == [0, 1, 2]
    assert summary["a"]["fid_mean"] == pytest.approx(21.0)
    assert summary["a"]["fid_std"] == pytest.approx(statistics.stdev([20.0, 21.0, 22.0]))
    assert summary["b"]["fid_std"] is None and summary["b"]["fid_ci95"] is None  # one seed: no spread


def test_settings_reject_unknown_data_and_tiny_sample_counts():
    with pytest.raises(ValueError, match="digits"):
        leaderboard.LeaderboardSettings(data="cifar")
    with pytest.raises(ValueError, match=">= 10"):
        leaderboard.LeaderboardSettings(samples=3)


@needs_shipped
def test_demo_quick_prints_the_table_and_writes_pngs(tmp_path, capsys):

    assert run_demo(tmp_path, steps=2, quick=True) == 0
    printed = capsys.readouterr().out
    assert "| model |" in printed
    assert list(tmp_path.glob("samples_*.png"))
    assert (tmp_path / "leaderboard_demo.json").is_file()
