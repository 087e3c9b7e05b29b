"""The arithmetic behind benchmark claims: GEMM FLOPs from profiled shapes, attention FLOPs, where a
profiled step's time goes, and the bf16-against-fp32 quality record."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import bench_train


def test_gemm_flops_from_shapes_match_torch_flop_counter():
    a, b, bias = torch.randn(6, 5), torch.randn(5, 7), torch.randn(7)
    x, y = torch.randn(3, 6, 5), torch.randn(3, 5, 4)
    cases = [
        ("aten::mm", [[6, 5], [5, 7]], lambda: torch.mm(a, b)),
        ("aten::addmm", [[7], [6, 5], [5, 7], [], []], lambda: torch.addmm(bias, a, b)),
        ("aten::bmm", [[3, 6, 5], [3, 5, 4]], lambda: torch.bmm(x, y)),
    ]
    for name, shapes, call in cases:
        counter = FlopCounterMode(display=False)
        with counter:
            call()
        assert bench_train._gemm_flops(name, shapes) == counter.get_total_flops(), name


def test_attention_flops_equal_explicit_matmul_count():
    """QK^T and PV of every layer, forward, counted by torch; the training step counts 3x that."""
    config = {"input_size": 8, "patch_size": 2, "hidden_size": 12, "depth": 3, "num_heads": 3}
    batch, tokens, heads = 2, 16, 3
    q = k = v = torch.randn(batch, heads, tokens, 12 // heads)
    counter = FlopCounterMode(display=False)
    with counter:
        for _ in range(config["depth"]):
            (q @ k.transpose(-1, -2)).softmax(-1) @ v
    assert bench_train._attention_flops(config, batch) == 3 * counter.get_total_flops()


def test_profiled_step_counts_its_gemms_and_groups_the_rest():
    a, b = torch.randn(64, 32), torch.randn(32, 48)
    weight = torch.randn(48, requires_grad=True)
    optimizer = torch.optim.AdamW([weight], lr=1e-3)

    def step():
        optimizer.zero_grad()
        out = torch.nn.functional.gelu(torch.mm(a, b) * weight)
        out.sum().backward()
        optimizer.step()

    step()
    profile = bench_train._profile_step(step)
    assert profile["gemm_calls"] == {("aten::mm", ((64, 32), (32, 48))): 1}
    assert profile["gemm_GFLOP"] * 1e9 == pytest.approx(2 * 64 * 32 * 48)  # the one forward GEMM
    assert {"GEMM", "GELU", "AdamW"} <= set(profile["share"])
    assert bench_train._replay_gemms(profile["gemm_calls"]) > 0
    assert sum(profile["share"].values()) == pytest.approx(1.0)


def _run(folder, losses, speed=100.0):
    (folder / "final").mkdir(parents=True)
    (folder / "final" / "README.md").write_text("```\nzoo train dit_t --precision bf16\n```\n")
    records = [{"step": 50 * (i + 1), "loss": loss, "samples_per_s": speed} for i, loss in enumerate(losses)]
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def _board(path, fids):
    protocol = {"solver": "ddim", "steps": 50, "model": "x", "weights_sha256": "0", "git_commit": "abc"}
    rows = [
        {"recipe": "dit_t", "seed": seed, "step": step, "fid_classifier": fid, "protocol": protocol}
        for (seed, step), fid in fids.items()
    ]
    path.write_text(json.dumps({"curves": rows}))
    return path


def test_bf16_quality_record(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_train, "RESULTS_DIR", tmp_path)
    losses = [0.5] * 30 + [0.2] * 10  # 40 logs of 50 steps: the last 500 steps are the last 10 logs
    bf16 = _run(tmp_path / "bf16", losses)
    fp32 = [_run(tmp_path / f"fp32_{s}", [0.5] * 30 + [0.1 * (s + 1)] * 10) for s in range(3)]
    bf16_board = _board(tmp_path / "b.json", {(0, 1000): 9.0, (0, 2000): 7.0})
    fp32_board = _board(tmp_path / "f.json", {(s, 2000): 4.0 + s for s in range(3)})
    result = bench_train.record_bf16_quality(bf16, fp32, bf16_board, fp32_board)
    assert result["late_loss"]["bf16"] == pytest.approx(0.2)
    assert result["late_loss"]["fp32_seeds"] == pytest.approx([0.1, 0.2, 0.3])
    assert [row["step"] for row in result["fid_by_step"]] == [2000]  # only steps both have
    row = result["fid_by_step"][0]
    assert row["fp32_fid_mean"] == pytest.approx(5.0)
    assert row["z"] == pytest.approx((7.0 - 5.0) / statistics.stdev([4.0, 5.0, 6.0]))
    assert result["protocols_equal"] and result["bf16_command"] == "zoo train dit_t --precision bf16"
    assert json.loads((tmp_path / "train.json").read_text())["bf16_quality"]["recipe"] == "dit_t"


def test_round_ratios_pair_the_rounds():
    """Ratios are taken round by round (sample i of each candidate), not of the sorted samples."""
    from benchmarks.common import round_ratios

    assert round_ratios([2.0, 3.0, 4.0], [1.0, 1.0, 2.0]) == {"median": 2.0, "min": 2.0, "max": 3.0}
    assert round_ratios([1.0, 4.0], [4.0, 1.0]) == {"median": 2.125, "min": 0.25, "max": 4.0}
