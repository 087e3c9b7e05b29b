"""scripts/guidance_scan.py: one leaderboard row per guidance scale, each recording its own guidance."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from zoo.eval import leaderboard

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("guidance_scan", ROOT / "scripts" / "guidance_scan.py")
guidance_scan = importlib.util.module_from_spec(spec)
spec.loader.exec_module(guidance_scan)

FEW = {"samples": 20, "steps": 3, "batch": 20, "kid_subsets": 3}


def test_each_scale_is_the_leaderboard_row_at_that_guidance(tmp_path):
    record = guidance_scan.scan("dit_t", [1.0, 2.0], **FEW)
    rows = record["rows"]
    assert [r["guidance"] for r in rows] == [1.0, 2.0]
    assert [r["protocol"]["guidance"] for r in rows] == [1.0, 2.0]
    assert rows[1]["protocol"]["guidance_doubles_batch"] is True
    assert rows[0]["command"] == "zoo leaderboard --data digits --models dit_t --cfg 1.0"
    direct = leaderboard.run_leaderboard(
        leaderboard.LeaderboardSettings(models="dit_t", cfg=2.0, **FEW), out=tmp_path
    )["results"][0]
    assert rows[1]["fid_classifier"] == direct["fid_classifier"]  # the same evaluation, not a copy
    assert rows[0]["fid_classifier"] != rows[1]["fid_classifier"]  # guidance changes the samples


def test_bad_scales_fail_before_any_sampling(tmp_path, monkeypatch):
    monkeypatch.setattr(guidance_scan, "scan", lambda *a, **k: pytest.fail("nothing may be sampled"))
    with pytest.raises(SystemExit):
        guidance_scan.main(["--scales", "0.5", "--out", str(tmp_path / "g.json")])
