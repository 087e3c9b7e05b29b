"""`zoo leaderboard --inception N`: the FID Inception's metrics beside the classifier's (issue 19).

The Inception columns must be what `zoo fid` gives on the same samples against the same reference
images; they are computed for the shipped models and each run's last checkpoint only; the seed
statistics and the tests against plain training read them where every seed has them."""

import json

import pytest
import torch

from zoo.cli import main
from zoo.cli.fid import fid_between
from zoo.eval import html, leaderboard, record
from zoo.eval.inception import DEFAULT_SHA256
from zoo.hub import PACKAGE_WEIGHTS
from zoo.hub.shipped import shipped_entries

SHIPPED = shipped_entries()
MODEL = "dit_t.digits"
needs_model = pytest.mark.skipif(MODEL not in SHIPPED, reason=f"{MODEL} is not shipped")


@needs_model
def test_inception_columns_are_zoo_fid_of_the_same_samples(tmp_path):
    out, npz = tmp_path / "board", tmp_path / "npz"
    argv = ["leaderboard", "--data", "digits", "--models", "dit_t", "--samples", "12", "--solver", "ddim:3"]
    argv += ["--inception", "12", "--npz", str(npz), "--out", str(out), "--html"]
    assert main(argv) == 0
    (row,) = json.loads((out / "leaderboard_digits.json").read_text())["results"]
    # the independent path: `zoo fid` on the NPZ the leaderboard saved, against the first 12 test images
    expected = fid_between("digits:test", f"npz:{npz / f'{MODEL}.npz'}", limit=12, progress=False)
    for metric in ("fid", "kid", "precision", "recall"):
        assert row[f"{metric}_inception"] == pytest.approx(expected[metric], rel=1e-9, abs=1e-12), metric
    # ... and they are not the classifier's numbers under another name
    assert row["fid_inception"] != pytest.approx(row["fid_classifier"], rel=0.05)
    protocol = row["inception_protocol"]
    assert protocol["extractor_sha256"] == DEFAULT_SHA256 == expected["protocol"]["extractor_sha256"]
    assert (protocol["reference_size"], protocol["num_samples"], protocol["kid_subset_size"]) == (12, 12, 12)
    assert protocol["preprocessing"] == expected["protocol"]["preprocessing"]
    assert "kid_std_inception" not in row  # every subset is both whole sets: a std of 0 by construction
    assert "inception" not in row["protocol"] and "extractor_source" not in row["protocol"]
    markdown = (out / "leaderboard_digits.md").read_text()
    assert "| fid_inception | kid_inception |" in markdown
    assert (
        "Inception metrics (`*_inception`, 1 rows): reference=digits:test (the first 12 images)" in markdown
    )
    page = (out / "leaderboard_digits.html").read_text()
    assert "FID (Inception)" in page and 'id="inception-protocol"' in page


def test_without_inception_nothing_changes_in_the_columns():
    rows = [{"model": "a.digits", "fid_classifier": 1.0, "protocol": {}}]
    assert html.table_metrics(rows) == html.TABLE_METRICS
    assert html._inception_section(rows) == []
    rows.append({"model": "b.digits", "fid_inception": 2.0, "protocol": {}})
    assert [m for m, _, _ in html.table_metrics(rows)][-2:] == ["class_accuracy", "fid_inception"]
    rows[1]["kid_inception"] = 0.1
    assert [m for m, _, _ in html.table_metrics(rows)][-2:] == ["fid_inception", "kid_inception"]


@needs_model
def test_inception_only_at_each_runs_last_checkpoint(tmp_path):
    model_dir = PACKAGE_WEIGHTS / MODEL
    config = json.loads((model_dir / "config.json").read_text())
    from safetensors.torch import load_file

    weights = {k: v.float() for k, v in load_file(str(model_dir / "model.safetensors")).items()}
    noisy = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in weights.items()}
    checkpoints = []
    for step, state in ((1, noisy), (2, weights)):
        path = tmp_path / f"step-{step}.pt"
        torch.save({"model_config": json.dumps(config), "ema": state}, path)
        checkpoints.append(leaderboard.Checkpoint("dit_t", 0, step, path, "ddpm"))
    settings = leaderboard.LeaderboardSettings(samples=10, solvers=("ddim:2",), kid_subsets=3, inception=10)
    rows = leaderboard.evaluate_runs(leaderboard.Evaluator(settings), checkpoints)
    assert [("fid_inception" in r, "inception_protocol" in r) for r in rows] == [(False, False), (True, True)]
    assert rows[1]["inception_protocol"]["num_samples"] == 10


def _curves(values: dict[str, list[float | None]]) -> list[dict]:
    out = []
    for recipe, per_seed in values.items():
        for seed, value in enumerate(per_seed):
            row = {
                "recipe": recipe,
                "seed": seed,
                "step": 100,
                "fid": 1.0 + seed,
                "protocol": {"process": "ddpm"},
            }
            if value is not None:
                row["fid_inception"] = value
            out.append(row)
    return out


def test_seed_statistics_and_tests_read_the_inception_fid_where_every_seed_has_it():
    curves = _curves(
        {"dit_t": [10.0, 11.0, 12.0], "dit_t_dtr": [20.0, 21.5, 22.0], "dit_t_uw": [5.0, None, 6.0]}
    )
    summary = {e["recipe"]: e for e in leaderboard.summarize_seeds(curves)}
    assert summary["dit_t"]["fid_inception_mean"] == pytest.approx(11.0)
    assert summary["dit_t_dtr"]["fid_inception_std"] == pytest.approx(
        torch.tensor([20.0, 21.5, 22.0]).std().item()
    )
    assert "fid_inception_mean" not in summary["dit_t_uw"]  # a mean over two of three seeds is not shown
    tests = [t for t in record.comparisons(curves) if t["metric"] == "fid_inception"]
    dtr = next(t for t in tests if t["recipe"] == "dit_t_dtr")
    assert dtr["baseline"] == "dit_t" and dtr["difference"] == pytest.approx(10.1666666, rel=1e-6)
    assert dtr["verdict"] == "worse"  # lower is better for the Inception FID too
    markdown = leaderboard.render_markdown({"settings": {"data": "digits"}, "results": [], "curves": curves})
    (header,) = [line for line in markdown.splitlines() if line.startswith("| recipe | step | seeds |")]
    assert header.endswith("| fid_inception | FID 95 % CI |")


def test_inception_settings_are_checked_before_any_sampling():
    with pytest.raises(ValueError, match=">= 10 reference images"):
        leaderboard.LeaderboardSettings(inception=5)
    with pytest.raises(ValueError, match="holds 180"):
        leaderboard.Evaluator(leaderboard.LeaderboardSettings(inception=500))


def test_cards_show_the_inception_fid_only_with_its_own_record():
    from zoo.card import card_metadata
    from zoo.config import config_from_name

    config = config_from_name("sit_t_p4")
    protocol = {"sampler": "euler", "steps": 50, "guidance": 1.0, "num_samples": 500}
    protocol |= {"extractor": "mnist_classifier", "reference": "mnist:test (10000 images)"}
    inception = {
        "num_samples": 500,
        "reference": "mnist:test (the first 1000 images)",
        "extractor": "inception_v3_fid",
    }
    card = {
        "results": {"fid": 9.5, "fid_inception": 30.25},
        "protocol": protocol,
        "protocol_inception": inception,
    }

    def configs(card):
        index = card_metadata(config, card)["model-index"][0]["results"]
        # huggingface_hub groups the metrics of one dataset type; each config names its own reference
        return {m["name"]: m.get("config") for r in index for m in r["metrics"]}

    shown = configs(card)
    assert shown["FID"] == "euler, 50 steps, guidance 1.0, 500 samples, mnist_classifier features"
    assert shown["FID (Inception)"] == (
        "euler, 50 steps, guidance 1.0, 500 samples vs mnist:test (the first 1000 images), "
        "inception_v3_fid features"
    )
    assert "FID (Inception)" not in configs({**card, "protocol_inception": None})


def test_write_cards_records_the_rows_metrics_and_both_protocols(tmp_path, monkeypatch):
    """`--write-cards` on a copy of the package: the manifest entry and the card take the committed MNIST
    board's row of sit_t_p4.mnist (its metrics, its protocol, its Inception record); a row measured
    without Inception drops the old Inception record rather than keep one of other samples."""
    import shutil

    from zoo.hub.shipped import SHIPPED_MANIFEST

    board = json.loads((PACKAGE_WEIGHTS.parents[1] / "benchmarks/results/leaderboard_mnist.json").read_text())
    (row,) = [r for r in board["results"] if r["model"] == "sit_t_p4.mnist"]
    weights = tmp_path / "pretrained"
    shutil.copytree(PACKAGE_WEIGHTS / "sit_t_p4.mnist", weights / "sit_t_p4.mnist")
    manifest = tmp_path / "shipped.json"
    entry = json.loads(SHIPPED_MANIFEST.read_text())["sit_t_p4.mnist"]
    manifest.write_text(json.dumps({"sit_t_p4.mnist": {k: v for k, v in entry.items() if k != "results"}}))
    monkeypatch.setattr(leaderboard, "SHIPPED_MANIFEST", manifest)
    monkeypatch.setattr(leaderboard, "PACKAGE_WEIGHTS", weights)
    leaderboard.write_cards(board, ["sit_t_p4.mnist"], rebuild_index=False)
    written = json.loads(manifest.read_text())["sit_t_p4.mnist"]
    assert written["results"]["fid"] == round(row["fid_classifier"], 5)
    assert written["results"]["fid_inception"] == round(row["fid_inception"], 5)
    assert (
        written["evaluation"] == row["protocol"]
        and written["evaluation_inception"] == row["inception_protocol"]
    )
    card = (weights / "sit_t_p4.mnist" / "README.md").read_text()
    assert f"value: {round(row['fid_classifier'], 5)}" in card and "sampler='euler'" in card
    plain = {k: v for k, v in row.items() if not k.endswith("_inception") and k != "inception_protocol"}
    leaderboard.write_cards({"results": [plain]}, rebuild_index=False)
    written = json.loads(manifest.read_text())["sit_t_p4.mnist"]
    assert "evaluation_inception" not in written and "fid_inception" not in written["results"]
