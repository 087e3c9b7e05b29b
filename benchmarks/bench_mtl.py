"""Balancer cost: amortised step time and peak memory of every MTL method relative to `linear`, K = 5.

One training step = forward, eps-MSE cluster losses, balancer.backward, AdamW step (and, for FAMO,
the no-grad re-evaluation forward + after_step), on random latents with stratified timesteps.
Methods with `update_every` = 25 are amortised from their measured update step and held step:
(t_update + 24 t_held) / 25.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import mtl
from benchmarks.common import interleaved_timings, peak_memory_bytes, report
from models import DiT

K = 5
TARGETS = {
    "uw": 1.02,
    "famo": 1.35,
    "nash@25": 1.25,
    "imtl@25": 1.25,
    "nash@1": 2.5,
    "imtl@1": 2.5,
    "pcgrad@1": 2.5,
}
MEMORY_TARGET = 1.3


def _setups(quick: bool) -> dict[str, dict[str, Any]]:
    tiny = {"input_size": 16, "patch_size": 2, "hidden_size": 128, "depth": 4, "num_heads": 4}
    small = {
        "input_size": 16 if quick else 32,
        "patch_size": 2,
        "hidden_size": 384,
        "depth": 12,
        "num_heads": 6,
    }
    return {"dit_t": {"net": tiny, "batch": 20}, "dit_s": {"net": small, "batch": 10}}


def _make_step(net: DiT, balancer: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params + [p for g in balancer.parameter_groups() for p in g["params"]], lr=1e-4
    )

    def losses() -> torch.Tensor:
        out = net(batch["x_t"], batch["t"], batch["y"])[:, : batch["noise"].shape[1]]
        per_sample = (out - batch["noise"]).pow(2).mean(dim=(1, 2, 3))
        return torch.zeros(K).index_add(0, batch["cluster"], per_sample) / batch["counts"]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with balancer.capture(net, batch["cluster"]):
            cluster_losses = losses()
        balancer.backward(cluster_losses, params)
        optimizer.step()
        if balancer.needs_after_step:
            with torch.no_grad():
                balancer.after_step(losses())

    return step


def _batch(size: int, net_cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    side = net_cfg["input_size"]
    cluster = torch.arange(size) % K
    t = cluster * (1000 // K) + torch.randint(0, 1000 // K, (size,), generator=generator)
    return {
        "x_t": torch.randn(size, 4, side, side, generator=generator),
        "noise": torch.randn(size, 4, side, side, generator=generator),
        "y": torch.randint(0, 1000, (size,), generator=generator),
        "t": t,
        "cluster": cluster,
        "counts": torch.bincount(cluster, minlength=K).float(),
    }


def _candidates() -> dict[str, tuple[str, dict[str, Any], int]]:
    """Timed configuration -> (balancer name, options, number of steps per call)."""
    return {
        "linear": ("linear", {}, 1),
        "uw": ("uw", {}, 1),
        "famo": ("famo", {}, 1),
        "nash@1": ("nash", {"update_every": 1}, 1),
        "imtl@1": ("imtl", {"update_every": 1}, 1),
        "pcgrad@1": ("pcgrad", {"update_every": 1}, 1),
        "held": ("nash", {"update_every": 10**9}, 1),  # a Nash/IMTL step between updates
    }


def run(quick: bool = False) -> dict:
    """Measure every balancer on dit_t and dit_s; print the table and write the JSON."""
    torch.manual_seed(0)
    rows = []
    for model_name, setup in _setups(quick).items():
        net = DiT(**setup["net"], in_channels=4, num_classes=1000, learn_sigma=True)
        batch = _batch(setup["batch"], setup["net"])
        steps = {}
        for label, (name, options, _) in _candidates().items():
            balancer = mtl.build(name, K, **options)
            steps[label] = _make_step(net, balancer, batch)
        if "held" in steps:  # the held candidate must skip its first (update) step
            steps["held"]()
        timings = interleaved_timings(steps, repeats=3 if quick else 7, warmup=1)
        memory = {}
        for label, step in steps.items():  # each from the same state: no gradients held from the last one
            net.zero_grad(set_to_none=True)
            memory[label] = peak_memory_bytes(step)
        median = {label: timing["median"] for label, timing in timings.items()}
        median["nash@25"] = (median["nash@1"] + 24 * median["held"]) / 25
        median["imtl@25"] = (median["imtl@1"] + 24 * median["held"]) / 25
        memory["nash@25"] = max(memory["nash@1"], memory["held"])
        memory["imtl@25"] = max(memory["imtl@1"], memory["held"])
        for label in ["linear", "uw", "famo", "nash@25", "imtl@25", "nash@1", "imtl@1", "pcgrad@1"]:
            time_ratio = median[label] / median["linear"]
            memory_ratio = memory[label] / memory["linear"]
            target = TARGETS.get(label)
            met = target is None or (time_ratio <= target and memory_ratio <= MEMORY_TARGET)
            rows.append(
                {
                    "model": model_name,
                    "balancer": label,
                    "step_s": median[label],
                    "time_x": time_ratio,
                    "time_target": target or "",
                    "peak_mb": memory[label] / 2**20,
                    "memory_x": memory_ratio,
                    "met": "yes" if met else "NO",
                }
            )
    return report(
        "mtl",
        f"MTL balancers, K={K}: amortised step time and peak memory vs linear (CPU)",
        rows,
        quick=quick,
        memory_target=MEMORY_TARGET,
    )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    run(quick=parser.parse_args().quick)
