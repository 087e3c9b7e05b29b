"""Interval clustering speed: the exact DP at T=1000 for K in {2, 5, 8, 16} and every objective (target
< 0.5 s each), plus the per-step cost of stratified sampling and cluster reduction."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from zoo.clustering import interval_clustering, list_objectives

from benchmarks.common import interleaved_timings, report

NUM_TIMESTEPS = 1000
TARGET_SECONDS = 0.5


def _linear_snr(num_timesteps: int) -> np.ndarray:
    betas = np.linspace(1e-4, 0.02, num_timesteps, dtype=np.float64)
    alpha_bar = np.cumprod(1.0 - betas)
    return alpha_bar / (1.0 - alpha_bar)


def run(quick: bool = False) -> dict[str, Any]:
    """Time the DP per (K, objective) and sample_timesteps + reduce per training step; print and save."""
    rng = np.random.default_rng(0)
    affinity = rng.uniform(-1.0, 1.0, size=(NUM_TIMESTEPS, NUM_TIMESTEPS))
    affinity = (affinity + affinity.T) / 2
    snr = _linear_snr(NUM_TIMESTEPS)
    repeats, warmup = (3, 1) if quick else (10, 2)

    rows: list[dict[str, Any]] = []
    for k in (2, 5, 8, 16):
        candidates = {
            objective: (
                lambda k=k, objective=objective: interval_clustering(
                    k, objective, snr=snr, affinity=affinity, num_timesteps=NUM_TIMESTEPS
                )
            )
            for objective in list_objectives()
        }
        candidates["snr legacy"] = lambda k=k: interval_clustering(k, "snr", snr=snr, legacy=True)
        timings = interleaved_timings(candidates, repeats=repeats, warmup=warmup)
        for name, timing in timings.items():
            rows.append(
                {
                    "K": k,
                    "objective": name,
                    "median_s": timing["median"],
                    "iqr_s": timing["iqr"],
                    "under_target": timing["median"] < TARGET_SECONDS,
                }
            )

    step_rows: list[dict[str, Any]] = []
    clusters = interval_clustering(5, "snr", snr=snr)
    generator = torch.Generator().manual_seed(0)
    for batch_size in (32, 256):
        losses = torch.rand(batch_size)
        t = clusters.sample_timesteps(batch_size, generator)
        timings = interleaved_timings(
            {
                "sample_timesteps": lambda b=batch_size: clusters.sample_timesteps(b, generator),
                "reduce": lambda losses=losses, t=t: clusters.reduce(losses, t),
            },
            repeats=20 if quick else 200,
            warmup=5,
        )
        for name, timing in timings.items():
            step_rows.append({"B": batch_size, "K": 5, "op": name, "median_us": timing["median"] * 1e6})

    print("\nper training step (CPU):")
    for row in step_rows:
        print(f"  {row['op']:<16} B={row['B']:<4} K=5  {row['median_us']:.1f} us")
    return report(
        "clustering",
        f"interval clustering DP, T={NUM_TIMESTEPS} (target < {TARGET_SECONDS} s)",
        rows,
        columns=["K", "objective", "median_s", "iqr_s", "under_target"],
        quick=quick,
        repeats=repeats,
        per_step=step_rows,
    )


if __name__ == "__main__":
    run()
