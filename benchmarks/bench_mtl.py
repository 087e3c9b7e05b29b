"""Balancer cost: amortised step time and peak memory of every MTL method relative to `linear`, K = 5.

One training step = forward, eps-MSE cluster losses, balancer.backward, AdamW step (and, for FAMO,
the no-grad re-evaluation forward + after_step), on random latents with stratified timesteps.
Methods with `update_every` = 25 are amortised from their measured update step and held step:
(t_update + 24 t_held) / 25.

The Gram methods at every step (`@1`) build their update from the Gram pass (`keep=auto`, the
default: per layer the smaller of its K cluster gradients and its input + output gradient is kept);
PCGrad is also measured in the other ways: always the kept cluster gradients (`keep=grads`, no GEMM
after the solve), always the kept output gradients (`keep=inputs`, one weight-gradient GEMM per layer
after the solve) and a second ordinary backward (`keep=backward`, what the zoo did before). Beside them, the peers on the same
step: ANT's method (K retained backwards over full-parameter gradients, then their combination: the
zoo's `engine="autograd"` reference does exactly this work) and torchjd's autogram engine (per-sample
Gramian by its module hooks, projected onto the K clusters, torchjd's PCGrad weighting, then one
weighted backward, as torchjd's documentation recommends).

Timing: this process's CPU time (`time.process_time`) with torch on ONE thread, candidates
interleaved after a warm-up round, median and spread (min, max, IQR) over the repeats; every row
records the model, latent size, batch, K and parameter count it was measured at, and the JSON the
machine's load average before and after each model's timings.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from zoo.models import DiT

from benchmarks.common import interleaved_timings, peak_memory_bytes, report, round_ratios
from zoo import mtl

K = 5
TARGETS = {  # label -> (time target, memory target) vs linear; None: no target (a reference row)
    "uw": (1.02, 1.3),
    "famo": (1.35, 1.3),
    "nash@25": (1.25, 1.1),
    "imtl@25": (1.25, 1.1),
    "nash@1": (1.3, 1.1),
    "imtl@1": (1.3, 1.1),
    "pcgrad@1": (1.3, 1.1),
    "pcgrad@1 keep=grads": (1.05, None),
}


def _setups(quick: bool) -> dict[str, dict[str, Any]]:
    tiny = {"input_size": 16, "patch_size": 2, "hidden_size": 128, "depth": 4, "num_heads": 4}
    small = {
        "input_size": 16 if quick else 32,
        "patch_size": 2,
        "hidden_size": 384,
        "depth": 12,
        "num_heads": 6,
    }
    return {"dit_s": {"net": small, "batch": 10}, "dit_t": {"net": tiny, "batch": 20}}  # the target first


def _losses(net: DiT, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = net(batch["x_t"], batch["t"], batch["y"])[:, : batch["noise"].shape[1]]
    return (out - batch["noise"]).pow(2).mean(dim=(1, 2, 3))


def _prime(optimizer: torch.optim.Optimizer) -> None:
    """Create AdamW's moment buffers now (a zero-gradient step), so no measured call allocates them."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _make_step(
    net: DiT, balancer: torch.nn.Module, batch: dict[str, torch.Tensor], reevaluate: bool = False
) -> Callable[[], None]:
    """One training step; `reevaluate` adds FAMO's no-grad re-evaluation forward to any balancer."""
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params + [p for g in balancer.parameter_groups() for p in g["params"]], lr=1e-4
    )
    _prime(optimizer)

    def losses() -> torch.Tensor:
        return torch.zeros(K).index_add(0, batch["cluster"], _losses(net, batch)) / batch["counts"]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with balancer.capture(net, batch["cluster"]):
            cluster_losses = losses()
        balancer.backward(cluster_losses, params)
        optimizer.step()
        if balancer.needs_after_step:
            with torch.no_grad():
                balancer.after_step(losses())
        elif reevaluate:
            with torch.no_grad():
                losses()

    return step


def _make_autogram_step(net: DiT, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    """torchjd's autogram on its own copy of the net (its hooks stay on the modules it was given)."""
    from torchjd.aggregation import PCGradWeighting
    from torchjd.autogram import Engine

    net = copy.deepcopy(net)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    _prime(optimizer)
    engine = Engine(net, batch_dim=0)
    weighting = PCGradWeighting()
    cluster, counts = batch["cluster"], batch["counts"]
    mean = torch.zeros(K, len(cluster)).index_put_((cluster, torch.arange(len(cluster))), 1 / counts[cluster])

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        per_sample = _losses(net, batch)
        gramian = engine.compute_gramian(per_sample)  # (B, B) per-sample gradient inner products
        weights = weighting(mean @ gramian @ mean.T)  # cluster losses = mean @ per_sample
        per_sample.backward(weights @ mean)
        optimizer.step()

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


def _candidates() -> dict[str, tuple[str, dict[str, Any]]]:
    """Timed configuration -> (balancer name, options); "autogram" is torchjd's engine."""
    every = {"update_every": 1}
    return {
        "linear": ("linear", {}),
        "uw": ("uw", {}),
        "famo": ("famo", {}),
        # FAMO's floor: a linear step plus the no-grad forward FAMO re-evaluates its losses with
        "linear + no-grad forward": ("linear", {"reevaluate": True}),
        "nash@1": ("nash", every),
        "imtl@1": ("imtl", every),
        "pcgrad@1": ("pcgrad", every),
        "pcgrad@1 keep=grads": ("pcgrad", {**every, "keep": "grads"}),
        "pcgrad@1 keep=inputs": ("pcgrad", {**every, "keep": "inputs"}),
        "pcgrad@1 keep=backward": ("pcgrad", {**every, "keep": "backward"}),
        "held": ("nash", {"update_every": 10**9}),  # a Nash/IMTL step between updates
        "ANT nash@1 (K backwards)": ("nash", {**every, "engine": "autograd"}),
        "torchjd autogram pcgrad@1": ("autogram", {}),
    }


REPEATS = {"dit_t": 3, "dit_s": 5}  # a full run; --quick: 3 each
ROWS = [
    "linear",
    "uw",
    "famo",
    "linear + no-grad forward",
    "nash@25",
    "imtl@25",
    "nash@1",
    "imtl@1",
    "pcgrad@1",
    "pcgrad@1 keep=grads",
    "pcgrad@1 keep=inputs",
    "pcgrad@1 keep=backward",
    "ANT nash@1 (K backwards)",
    "torchjd autogram pcgrad@1",
]


def run(
    quick: bool = False,
    models: list[str] | None = None,
    labels: list[str] | None = None,
    repeats: int | None = None,
    name: str = "mtl",
) -> dict:
    """Measure every balancer on dit_t and dit_s; print the table and write the JSON.

    A focused run (``models``, ``labels``: the candidates, ``linear`` always among them; ``repeats``)
    writes ``benchmarks/results/<name>.json`` and records per round the ratio to linear.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(quick, models, labels, repeats, name)
    finally:
        torch.set_num_threads(threads)


def _run(
    quick: bool, models: list[str] | None, labels: list[str] | None, repeats: int | None, name: str
) -> dict:
    torch.manual_seed(0)
    rows, spreads, loads = [], {}, {}
    chosen = _candidates()
    if labels is not None:
        wanted = {"linear", *labels}
        amortised = {label for label in wanted if label.endswith("@25")}  # from @1 and the held step
        wanted = (
            (wanted - amortised)
            | {f"{label[:-3]}@1" for label in amortised}
            | ({"held"} if amortised else set())
        )
        unknown = sorted(wanted - set(chosen))
        if unknown:
            raise ValueError(f"unknown candidates {unknown}; available: {list(chosen)} and nash@25, imtl@25")
        chosen = {label: c for label, c in chosen.items() if label in wanted}
    setups = {m: s for m, s in _setups(quick).items() if models is None or m in models}
    rounds = {}
    for model_name, setup in setups.items():
        count = repeats or (3 if quick else REPEATS[model_name])
        rounds[model_name] = count
        net = DiT(**setup["net"], in_channels=4, num_classes=1000, learn_sigma=True)
        batch = _batch(setup["batch"], setup["net"])
        side = setup["net"]["input_size"]
        sizes = {
            "model": model_name,
            "latent": f"{side}x{side}x4",
            "batch": setup["batch"],
            "k": K,
            "params_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 2),
        }
        steps = {}
        for label, (balancer, options) in chosen.items():
            if balancer == "autogram":
                steps[label] = _make_autogram_step(net, batch)
            else:
                options = dict(options)
                reevaluate = options.pop("reevaluate", False)
                steps[label] = _make_step(net, mtl.build(balancer, K, **options), batch, reevaluate)
        if "held" in steps:
            steps["held"]()  # the held candidate must skip its first (update) step
        memory = {}
        for label, step in steps.items():  # each from the same state: no gradients held from the last one
            net.zero_grad(set_to_none=True)
            memory[label] = peak_memory_bytes(step)  # also each candidate's warm-up call
        before = os.getloadavg()
        timings = interleaved_timings(
            steps, repeats=count, warmup=1 if model_name == "dit_t" else 0, clock=time.process_time
        )
        loads[model_name] = {"before": before, "after": os.getloadavg()}
        spreads[model_name] = timings
        median = {label: timing["median"] for label, timing in timings.items()}
        low = {label: timing["min"] for label, timing in timings.items()}
        high = {label: timing["max"] for label, timing in timings.items()}
        for label in [label for label in ("nash", "imtl") if "held" in median and f"{label}@1" in median]:
            for table in (median, low, high):
                table[f"{label}@25"] = (table[f"{label}@1"] + 24 * table["held"]) / 25
            memory[f"{label}@25"] = max(memory[f"{label}@1"], memory["held"])
        for label in [label for label in ROWS if label in median]:
            time_ratio = median[label] / median["linear"]
            per_round = (
                round_ratios(timings[label]["samples"], timings["linear"]["samples"])
                if label in timings
                else None
            )
            memory_ratio = memory[label] / memory["linear"]
            time_target, memory_target = TARGETS.get(label, (None, None))
            met = (time_target is None or time_ratio <= time_target) and (
                memory_target is None or memory_ratio <= memory_target
            )
            rows.append(
                {
                    **sizes,
                    "balancer": label,
                    "cpu_s": median[label],
                    "cpu_s_min": low[label],
                    "cpu_s_max": high[label],
                    "time_x": time_ratio,
                    # the ratio to linear in each round (the two timed in one round): median, min, max
                    "time_x_rounds": ""
                    if per_round is None
                    else [per_round["median"], per_round["min"], per_round["max"]],
                    "time_target": time_target or "",
                    "peak_MiB": memory[label] / 2**20,
                    "memory_x": memory_ratio,
                    "memory_target": memory_target or "",
                    "met": "" if time_target is None and memory_target is None else ("yes" if met else "NO"),
                }
            )
        _write(rows, spreads, loads, quick, rounds, name)  # what is measured so far survives an interruption
    return _write(rows, spreads, loads, quick, rounds, name)


def _write(rows: list[dict], spreads: dict, loads: dict, quick: bool, rounds: dict, name: str) -> dict:
    return report(
        name,
        f"MTL balancers, K={K}: amortised step CPU time (1 thread) and peak memory vs linear",
        rows,
        columns=[
            "model",
            "latent",
            "batch",
            "params_M",
            "balancer",
            "cpu_s",
            "cpu_s_min",
            "cpu_s_max",
            "time_x",
            "time_x_rounds",
            "time_target",
            "peak_MiB",
            "memory_x",
            "memory_target",
            "met",
        ],
        quick=quick,
        repeats=rounds,
        warmup={"dit_t": "the memory call + 1 round", "dit_s": "the memory call"},
        clock="time.process_time, torch threads 1",
        timings=spreads,
        load_average=loads,
    )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default=None, help="comma-separated: dit_s, dit_t (default both)")
    parser.add_argument("--candidates", default=None, help="comma-separated labels (default all)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--name", default="mtl", help="the JSON's name in benchmarks/results/")
    arguments = parser.parse_args()
    run(
        quick=arguments.quick,
        models=arguments.models.split(",") if arguments.models else None,
        labels=arguments.candidates.split(",") if arguments.candidates else None,
        repeats=arguments.repeats,
        name=arguments.name,
    )
