"""benchmarks/gpu_check.py cannot rot: its CPU dry run covers every section, and what CPU can check passes.

The dry run runs in a subprocess (it compiles, starts a gloo process group and has a watchdog that
exits the process at its budget), writing to a temporary directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check

REPO = Path(__file__).resolve().parent.parent
CUDA_ONLY_HINTS = ("xformers", "compile", "CUDA allocator", "GPU", "matmul ceiling")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    return result, (out / "gpu_check.md").read_text()


def _items(section: dict) -> list[dict]:
    return section.get("checks", []) + section.get("rows", [])


def test_dry_run_has_every_section_and_the_cpu_checks_pass(dry_run: tuple[dict, str]) -> None:
    result, _ = dry_run
    assert result["complete"] is True and "aborted" not in result
    assert result["mode"].startswith("dry-run")
    sections = result["sections"]
    assert list(sections) == list(gpu_check.SECTIONS)
    for name in gpu_check.CORRECTNESS:
        assert sections[name]["status"] == "passed", (name, sections[name])
    for name in ("env", "speed", "overheads", "sampling"):
        assert sections[name]["status"] == "measured", (name, sections[name])
    ran = {name: [i for i in _items(sections[name]) if i["status"] != "skipped"] for name in sections}
    # every correctness section checked something real, against a tolerance, and it passed
    for name in gpu_check.CORRECTNESS:
        assert ran[name], name
        for item in ran[name]:
            assert item["status"] in ("passed", "measured"), (name, item)
    for item in ran["attention"] + ran["precision"] + ran["compile"]:
        assert item["tolerance"], item
        for key, tol in item["tolerance"].items():
            assert 0 <= item[key] <= tol, (item["name"], key)
    # the mixed precisions of the training step really ran (not skipped) on CPU
    names = [item["name"] for item in ran["precision"]]
    assert [n.split()[0] for n in names] == ["fp32", "bf16", "fp16"]
    bf16 = next(i for i in ran["precision"] if i["name"].startswith("bf16"))
    assert bf16["grad_rel"] > 0  # a different precision, so not bitwise the reference
    # the Gram hooks on a compiled net: both the update step and the held step match eager
    nash = [i for i in ran["compile"] if i["name"].startswith("Nash-MTL")]
    assert [i["updated"] for i in nash] == [True, False]
    assert any("GramCapture" in said for i in nash for said in i["balancer_said"])
    # timings exist where CPU has them
    speed = ran["speed"]
    assert speed and all(row["images_per_s"] > 0 and row["train_GFLOP_per_image"] > 0 for row in speed)
    assert {row["name"] for row in ran["overheads"]} >= {"DTR", "UW", "FAMO", "Nash-MTL (Gram every step)"}
    assert all(row["ratio"] > 0 for row in ran["overheads"])
    assert ran["sampling"][0]["finite"] is True


def test_dry_run_says_why_cuda_only_units_were_skipped(dry_run: tuple[dict, str]) -> None:
    result, markdown = dry_run
    skipped = [
        (name, i) for name, s in result["sections"].items() for i in _items(s) if i["status"] == "skipped"
    ]
    assert skipped
    for name, item in skipped:
        assert item["reason"].startswith(gpu_check.NO_CUDA + ":"), (name, item)
        assert any(hint in item["reason"] for hint in CUDA_ONLY_HINTS), (name, item)
    kinds = {name for name, _ in skipped}
    assert {"attention", "speed", "overheads", "sampling", "checkpointing"} <= kinds
    env = result["sections"]["env"]
    assert env["gpu"]["status"] == "skipped" and env["matmul_ceiling"]["status"] == "skipped"
    assert env["xformers"]["available"] is False and env["xformers"]["reason"].startswith(gpu_check.NO_CUDA)
    assert result["targets"]["mfu_xl_bf16_compile"]["status"] == "not measured"
    assert "| compile | passed |" in markdown and "no CUDA" in markdown


def test_fast_dit_anchor_is_about_24_percent_mfu(dry_run: tuple[dict, str]) -> None:
    anchor = dry_run[0]["anchors"]["fast_dit_a100"]
    assert anchor["images_per_s"] == pytest.approx(0.84 * 128)
    # DiT-XL/2 at 256 px: 118.6 GMACs forward (the DiT paper's 119 GFLOPs), x2 flops, x3 with backward
    assert anchor["train_GFLOP_per_image"] == pytest.approx(3 * 2 * 118.6, rel=1e-3)
    assert anchor["mfu"] == pytest.approx(0.245, abs=0.005)


def test_budget_guard_skips_units_that_do_not_fit(tmp_path: Path) -> None:
    plan = gpu_check.Plan(dry_run=False)  # the H200 estimates, no device needed
    run = gpu_check.Run(plan, tmp_path, budget=60.0, command="test", sections=list(gpu_check.SECTIONS))
    assert run.fits("attention") is None  # 10 s of 60 - 20 s margin
    reason = run.fits("compile")  # 75 s does not fit
    assert reason is not None and reason.startswith("time budget: needs ~75 s")
    run.save()
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["complete"] is False and set(saved["sections"]) == set(gpu_check.SECTIONS)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dry-run", "--budget", "481"], "--budget must be in"),
        (["--dry-run", "--sections", "speed,warp"], "unknown section(s) ['warp']"),
    ],
)
def test_bad_arguments_fail_before_any_work(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        gpu_check.parse_args(argv)
    assert message in capsys.readouterr().err


def test_the_real_check_needs_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():  # on the GPU machine the real check is accepted
        assert gpu_check.parse_args([]).dry_run is False
        return
    with pytest.raises(SystemExit):
        gpu_check.parse_args([])
    assert "no CUDA device" in capsys.readouterr().err
