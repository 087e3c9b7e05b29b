"""Training throughput: samples/s of `dit_t` (and its DTR + UW recipe) on digits with the zoo Trainer.

CPU: fp32. CUDA (when present): bf16 with and without torch.compile and gradient checkpointing, with
peak memory. A full `zoo train dit_t_dtr_uw_k5 --data digits --steps 2000` run, when one has been
made, is summarised with `python -m benchmarks.bench_train --digits-run RUN_DIR` (wall time,
samples/s, final losses, and its sample grid copied next to the JSON).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS_DIR, interleaved_timings, peak_memory_bytes, report
from zoo.data import load_dataset
from zoo.train import TrainConfig, Trainer

NAME = "train"


def _trainer(model: str, batch: int, out: str, device: str, **changes: Any) -> Trainer:
    config = TrainConfig(model=model, batch=batch, out=out, progress=False, device=device, **changes)
    return Trainer(config, dataset=load_dataset("digits"))


def _candidates(device: str, batch: int, out: str) -> dict[str, Trainer]:
    if device == "cpu":
        return {
            "dit_t fp32": _trainer("dit_t", batch, out, device),
            "dit_t_dtr_uw_k5 fp32": _trainer("dit_t_dtr_uw_k5", batch, out, device),
        }
    return {
        "dit_t_dtr_uw_k5 bf16": _trainer("dit_t_dtr_uw_k5", batch, out, device, precision="bf16"),
        "dit_t_dtr_uw_k5 bf16 compile": _trainer(
            "dit_t_dtr_uw_k5", batch, out, device, precision="bf16", compile=True
        ),
        "dit_t_dtr_uw_k5 bf16 ckpt": _trainer(
            "dit_t_dtr_uw_k5", batch, out, device, precision="bf16", grad_checkpointing=True
        ),
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Time `steps` training steps per candidate, interleaved; report samples/s (and peak memory on CUDA)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = 64 if device == "cpu" else 256
    steps = 3 if quick else 10
    data = load_dataset("digits")
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(len(data), (batch,), generator=generator)
    x0, y = data.images[index], data.labels[index]
    with tempfile.TemporaryDirectory() as out:
        trainers = _candidates(device, batch, out)
        calls = {
            name: (lambda t=trainer: [t.train_step(x0, y) for _ in range(steps)])
            for name, trainer in trainers.items()
        }
        timings = interleaved_timings(calls, repeats=3 if quick else 5, warmup=1)
        rows = []
        for name, trainer in trainers.items():
            seconds = timings[name]["median"]
            row = {
                "candidate": name,
                "device": device,
                "batch": batch,
                "steps": steps,
                "s_per_step": seconds / steps,
                "samples_per_s": batch * steps / seconds,
                "params": trainer.model.num_parameters(),
            }
            if device == "cuda":
                row["peak_mem_MiB"] = peak_memory_bytes(lambda t=trainer: t.train_step(x0, y)) / 2**20
            rows.append(row)
    extra: dict[str, Any] = {}
    previous = RESULTS_DIR / f"{NAME}.json"
    if previous.is_file():  # keep a recorded full run across benchmark re-runs
        extra = {k: v for k, v in json.loads(previous.read_text()).items() if k == "digits_run"}
    return report(NAME, "Training throughput (Trainer.train_step on digits)", rows, timings=timings, **extra)


def record_digits_run(run_dir: str | Path) -> dict[str, Any]:
    """Add a finished `zoo train ... --data digits` run (log + final grid) to the benchmark JSON."""
    run_dir = Path(run_dir)
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    last = records[-1]
    grid = RESULTS_DIR / "train_digits_samples.png"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "final" / "samples.png", grid)
    card_lines = (run_dir / "final" / "README.md").read_text().splitlines()
    command = next(line for line in card_lines if line.strip().startswith("zoo train"))
    summary = {
        "command": command.strip(),
        "steps": last["step"],
        "wall_time_s": last["elapsed"],
        "mean_samples_per_s": sum(r["samples_per_s"] for r in records) / len(records),
        "final_loss": last["loss"],
        "final_cluster_losses": last["cluster_losses"],
        "sample_grid": str(grid.relative_to(RESULTS_DIR.parent.parent)),
    }
    path = RESULTS_DIR / f"{NAME}.json"
    payload = json.loads(path.read_text()) if path.is_file() else {"benchmark": NAME}
    payload["digits_run"] = summary
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--digits-run", default=None, help="record a finished digits run folder instead")
    arguments = parser.parse_args()
    if arguments.digits_run:
        record_digits_run(arguments.digits_run)
    else:
        run(quick=arguments.quick)
