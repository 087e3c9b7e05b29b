"""Sampling throughput: images/s for DDPM-250 and DDIM-50, unguided (1.0) and guided (1.5), on DiT nets.

Each case runs a few sampler steps (the full chain for the tiny net when not quick) and extrapolates
the per-step time to the full step count. Guidance batches both halves into one forward, so a guided
step should cost about one forward at twice the batch (ratio ~2 when compute-bound, less when
overhead dominates), never two separate forwards plus overhead.
"""

from __future__ import annotations

import sys
import time
from functools import partial
from typing import Any

import torch
from zoo.models import DiT

from benchmarks.common import interleaved_timings, report
from zoo.diffusion import GaussianDiffusion

CONFIGS = {
    "tiny": dict(
        input_size=8, patch_size=2, in_channels=4, hidden_size=128, depth=4, num_heads=4, num_classes=10
    ),
    "DiT-S/2": dict(
        input_size=32, patch_size=2, in_channels=4, hidden_size=384, depth=12, num_heads=6, num_classes=1000
    ),
}
FULL_STEPS = {"ddpm": 250, "ddim": 50}


def _plan(name: str, quick: bool, on_gpu: bool) -> tuple[int, dict[str, int], int]:
    """(batch, measured steps per sampler, repeats) for one config: full chains on GPU, slices on CPU."""
    if on_gpu:
        return 8, {"ddpm": 25, "ddim": 10} if quick else dict(FULL_STEPS), 2 if quick else 5
    if name == "tiny":
        return 8, {"ddpm": 10, "ddim": 10} if quick else {"ddpm": 50, "ddim": 50}, 2 if quick else 3
    return (2, {"ddpm": 2, "ddim": 2}, 2) if quick else (8, {"ddpm": 4, "ddim": 4}, 3)


def run(quick: bool = False) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    diffusion = GaussianDiffusion("linear", 1000, learn_sigma=True)
    rows: list[dict[str, Any]] = []
    ratios: dict[str, float] = {}
    for name, config in CONFIGS.items():
        torch.manual_seed(0)
        net = DiT(**config).to(device).eval()
        batch, measured, repeats = _plan(name, quick, device.type == "cuda")
        shape = (batch, config["in_channels"], config["input_size"], config["input_size"])
        labels = torch.randint(0, config["num_classes"], (batch,), device=device)
        candidates = {}
        for sampler, steps in measured.items():
            spec = f"ddim{FULL_STEPS['ddim']}" if sampler == "ddim" else str(FULL_STEPS["ddpm"])
            # A `steps`-long slice of the full respaced chain; the cost of a step does not depend on t.
            process = diffusion.respace(spec).respace(list(range(steps)))
            for guidance in (1.0, 1.5):
                generator = torch.Generator(device).manual_seed(0)
                candidates[(sampler, guidance)] = partial(
                    process.sample,
                    net,
                    shape,
                    labels,
                    sampler=sampler,
                    guidance=guidance,
                    generator=generator,
                )
        timings = interleaved_timings(candidates, repeats=repeats, warmup=1, clock=time.process_time)
        for (sampler, guidance), timing in timings.items():
            per_step = timing["median"] / measured[sampler]
            full = FULL_STEPS[sampler]
            rows.append(
                {
                    "net": name,
                    "sampler": f"{sampler}-{full}",
                    "guidance": guidance,
                    "batch": batch,
                    "measured_steps": measured[sampler],
                    "ms_per_step": per_step * 1e3,
                    "images_per_s": batch / (per_step * full),
                    "s_per_batch": per_step * full,
                }
            )
        for sampler in measured:
            ratio = timings[(sampler, 1.5)]["median"] / timings[(sampler, 1.0)]["median"]
            ratios[f"{name} {sampler}"] = ratio
            rows.append(
                {"net": name, "sampler": f"{sampler}-{FULL_STEPS[sampler]}", "guided/unguided time": ratio}
            )
        del net
    columns = [
        "net",
        "sampler",
        "guidance",
        "batch",
        "measured_steps",
        "ms_per_step",
        "images_per_s",
        "s_per_batch",
        "guided/unguided time",
    ]
    title = f"Sampling throughput on {device.type} (extrapolated from measured steps)"
    return report(
        "sampling", title, rows, columns, quick=quick, guided_over_unguided=ratios, clock="time.process_time"
    )


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
