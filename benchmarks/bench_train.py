"""Training throughput: samples/s of `dit_t` (and its DTR + UW recipe) on digits with the zoo Trainer.

Sections (`--sections`, default all; a subset replaces only its own entries of the JSON):

* `trainer` -- CPU: fp32, bf16 autocast (`precision="bf16"`) and `torch.compile` (Inductor),
  interleaved after a warm-up round that also pays the compilation. CUDA (when present): bf16 with
  and without torch.compile and gradient checkpointing, with peak memory.
* `dit_s` -- a DiT-S/2 step at 32x32x4 latents (batch 10, forward + eps loss + backward + AdamW,
  this process's CPU time on one thread) in fp32 and bf16 autocast (compiling DiT-S took too long
  for the shared machine).
* `peak` -- how close the fp32 DiT-S/2 step (eager and `torch.compile`) comes to this thread's GEMM
  peak (the best 2048^3 fp32 `torch.mm`): useful FLOPs (the step's GEMMs from the profiled shapes +
  attention) per CPU second, the GEMMs' own rate at the step's shapes, and where the rest of the step's
  self time goes (attention, GELU, LayerNorm, copies, AdamW, other elementwise).
* `adamw` -- the Trainer's fused CPU AdamW against torch's CPU default (a Python loop over the
  tensors): dit_t `Trainer.train_step` on digits with each, and DiT-S/2's optimizer step alone, with
  the largest parameter difference between the two after equal steps.
* `compile_gram` -- whether a compiled net keeps the Gram balancers exact: the Gram matrix and the
  update of a compiled dit_t against the eager one (fp32), and a held step of Nash-MTL (no capture:
  the compiled forward runs) against the eager net's.
* `ladder` -- the MNIST ladder's training step (`sit_t_p4` and `sit_t_p4_nash_k5`, 28x28, batch 64, lr
  2e-3, `Trainer.train_step`) in fp32 and under CPU bf16 autocast: whether bf16 would shorten the ladder
  on this CPU (CPU time on one thread, interleaved, ratio per round).
* `ddpm` -- what the zoo's slots (diffusion process, clusters, balancer, weighting) add to a plain
  DDPM training step: `model.loss` + `model.backward` + AdamW, and `Trainer.train_step`, against a
  hand-written epsilon-MSE step (q_sample from the same alpha-bar table, the net, MSE, backward,
  AdamW) on copies of the same net (dit_t without learned sigma, so the loss is the eps MSE alone),
  with the same batch, timesteps and noise; interleaved, CPU time on one thread, ratio per round.

A full `zoo train dit_t_dtr_uw_k5 --data digits --steps 2000` run, when one has been made, is
summarised with `python -m benchmarks.bench_train --digits-run RUN_DIR` (wall time, samples/s,
final losses, and its sample grid copied next to the JSON).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from zoo.models import DiT
from zoo.mtl.gram import GramCapture

from benchmarks.common import (
    RESULTS_DIR,
    format_table,
    interleaved_timings,
    peak_memory_bytes,
    report,
    round_ratios,
)
from zoo import mtl
from zoo.data import load_dataset
from zoo.train import TrainConfig, Trainer

NAME = "train"
SECTIONS = ("trainer", "dit_s", "peak", "adamw", "compile_gram", "ddpm", "ladder")


def _trainer(model: str, batch: int, out: str, device: str, **changes: Any) -> Trainer:
    config = TrainConfig(model=model, batch=batch, out=out, progress=False, device=device, **changes)
    return Trainer(config, dataset=load_dataset("digits"))


def _candidates(device: str, batch: int, out: str) -> dict[str, Trainer]:
    if device == "cpu":
        return {
            "dit_t fp32": _trainer("dit_t", batch, out, device),
            "dit_t bf16": _trainer("dit_t", batch, out, device, precision="bf16"),
            "dit_t fp32 compile": _trainer("dit_t", batch, out, device, compile=True),
            "dit_t_dtr_uw_k5 fp32": _trainer("dit_t_dtr_uw_k5", batch, out, device),
            "dit_t_dtr_uw_k5 bf16": _trainer("dit_t_dtr_uw_k5", batch, out, device, precision="bf16"),
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


def run(quick: bool = False, sections: list[str] | None = None) -> dict[str, Any]:
    """Run the named sections (default all), print their tables and write the JSON.

    A subset keeps the other sections' entries of the existing JSON, so one section can be re-run.
    """
    sections = list(SECTIONS if sections is None else sections)
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown sections {unknown}; available: {list(SECTIONS)}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    previous = RESULTS_DIR / f"{NAME}.json"
    kept: dict[str, Any] = {}
    if previous.is_file():  # the sections not run now, and a recorded full digits run, survive
        old = json.loads(previous.read_text())
        kept = {k: v for k, v in old.items() if k not in ("benchmark", "machine", "time", "title")}
    extra: dict[str, Any] = {k: v for k, v in kept.items() if k != "rows"}
    rows = kept.get("rows", []) if "trainer" not in sections else []
    meta = dict(extra.get("sections", {}))
    if rows and "trainer" not in meta:  # rows of a run from before the sections were recorded
        meta["trainer"] = {"time": old["time"], "note": "kept from an earlier run (no section record)"}
    for section in sections:
        if device != "cpu" and section != "trainer":
            continue
        load = os.getloadavg()
        if section == "trainer":
            rows, extra["timings"] = _trainer_rows(device, quick)
        elif section == "dit_s":
            extra["dit_s_step"] = _dit_s_step(quick)
        elif section == "peak":
            extra["gemm_peak"] = _gemm_peak(quick)
        elif section == "adamw":
            extra["adamw"] = _adamw_kernels(quick)
        elif section == "compile_gram":
            extra["compile_gram_exactness"] = _compile_gram_check()
        elif section == "ladder":
            extra["ladder_step"] = _ladder_step(quick)
        else:
            extra["ddpm_overhead"] = _ddpm_overhead(quick)
        meta[section] = {
            "quick": quick,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "load_average_before": load,
            "load_average_after": os.getloadavg(),
        }
    extra["sections"] = meta
    extra.pop("quick", None)  # per section now
    result = report(NAME, "Training throughput (Trainer.train_step on digits)", rows, **extra)
    if "dit_s" in sections and "dit_s_step" in extra:
        print(format_table(extra["dit_s_step"]))
    if "peak" in sections and "gemm_peak" in extra:
        print(format_table(extra["gemm_peak"]["rows"]))
        print(
            "GEMM peak:",
            extra["gemm_peak"]["gemm_peak_GFLOPs"],
            "GFLOP/s;",
            extra["gemm_peak"]["eager_profile"],
        )
    if "adamw" in sections and "adamw" in extra:
        print(format_table(extra["adamw"]["rows"]))
    if "compile_gram" in sections and "compile_gram_exactness" in extra:
        print("compile + Gram hooks:", extra["compile_gram_exactness"])
    if "ladder" in sections and "ladder_step" in extra:
        print(format_table(extra["ladder_step"]))
    if "ddpm" in sections and "ddpm_overhead" in extra:
        print(format_table(extra["ddpm_overhead"]["rows"]))
        print("exactness:", extra["ddpm_overhead"]["exactness"])
    return result


def _trainer_rows(device: str, quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Time `steps` training steps per candidate, interleaved; samples/s (and peak memory on CUDA)."""
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
        timings = interleaved_timings(calls, repeats=3 if quick else 5, warmup=1, clock=time.process_time)
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
    return rows, timings


def _dit_s_inputs(side: int, batch: int = 10) -> tuple[dict[str, Any], tuple[torch.Tensor, ...]]:
    """DiT-S/2's config at side x side x 4 latents and a fixed batch (x, noise, t, y)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, side, side, generator=generator)
    noise = torch.randn(batch, 4, side, side, generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator)
    y = torch.randint(0, 1000, (batch,), generator=generator)
    config = {"input_size": side, "patch_size": 2, "hidden_size": 384, "depth": 12, "num_heads": 6}
    return config, (x, noise, t, y)


def _dit_s_train_step(
    config: dict[str, Any], batch: tuple[torch.Tensor, ...], dtype: torch.dtype | None, compiled: bool
) -> tuple[torch.nn.Module, Any]:
    """(net, step): one training step of a fresh DiT-S/2 (forward, eps MSE, backward, AdamW)."""
    x, noise, t, y = batch
    torch.manual_seed(0)
    net = DiT(**config, in_channels=4, num_classes=1000, learn_sigma=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    forward = torch.compile(net) if compiled else net

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = (forward(x, t, y)[:, :4].float() - noise).pow(2).mean()
        loss.backward()
        optimizer.step()
        return float(loss)

    return net, step


def _dit_s_step(quick: bool) -> list[dict[str, Any]]:
    """DiT-S/2 at 32x32x4 (16x16 quick), batch 10: fp32 vs bf16 autocast, CPU time on one thread."""

    side = 16 if quick else 32
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config, batch = _dit_s_inputs(side)
        steps = {
            "dit_s fp32": _dit_s_train_step(config, batch, None, False)[1],
            "dit_s bf16 autocast": _dit_s_train_step(config, batch, torch.bfloat16, False)[1],
        }
        first = {name: step() for name, step in steps.items()}  # warm-up
        timings = interleaved_timings(steps, repeats=3 if quick else 5, warmup=1, clock=time.process_time)
    finally:
        torch.set_num_threads(threads)
    base = timings["dit_s fp32"]["median"]
    return [
        {
            "candidate": name,
            "latent": f"{side}x{side}x4",
            "batch": len(batch[0]),
            "threads": 1,
            "cpu_s": timing["median"],
            "cpu_s_min": timing["min"],
            "cpu_s_max": timing["max"],
            "time_x_fp32": timing["median"] / base,
            "time_x_fp32_per_round": round_ratios(timing["samples"], timings["dit_s fp32"]["samples"]),
            "first_step_loss": first[name],
        }
        for name, timing in timings.items()
    ]


LADDER_RECIPES = ("sit_t_p4", "sit_t_p4_nash_k5")


def _ladder_step(quick: bool) -> list[dict[str, Any]]:
    """The MNIST ladder's Trainer step (its recipes, batch 64, lr 2e-3): fp32 vs bf16 autocast, one thread."""
    steps, repeats = (2, 2) if quick else (5, 5)
    data = load_dataset("mnist")
    index = torch.randint(len(data), (64,), generator=torch.Generator().manual_seed(0))
    x0, y = data.images[index], data.labels[index]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as out:
            trainers = {
                f"{recipe} {precision}": Trainer(
                    TrainConfig(
                        model=recipe,
                        batch=64,
                        lr=2e-3,
                        out=out,
                        progress=False,
                        device="cpu",
                        precision=precision,
                    ),
                    dataset=data,
                )
                for recipe in LADDER_RECIPES
                for precision in ("fp32", "bf16")
            }
            calls = {
                name: (lambda t=trainer: [t.train_step(x0, y) for _ in range(steps)])
                for name, trainer in trainers.items()
            }
            timings = interleaved_timings(calls, repeats=repeats, warmup=1, clock=time.process_time)
    finally:
        torch.set_num_threads(threads)
    rows = []
    for name, timing in timings.items():
        base = timings[name.replace(" bf16", " fp32")]
        rows.append(
            {
                "candidate": name,
                "data": "mnist",
                "batch": 64,
                "threads": 1,
                "s_per_step": timing["median"] / steps,
                "time_x_fp32": timing["median"] / base["median"],
                "time_x_fp32_per_round": round_ratios(timing["samples"], base["samples"]),
            }
        )
    return rows


#: the profiler's names of GEMM ops and of the CPU flash-attention kernels (forward, backward)
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
ATTENTION_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu",)


def _gemm_ceiling(n: int, repeats: int = 5) -> float:
    """The fp32 GEMM rate of this thread (GFLOP/s): the best CPU time of an n x n x n `torch.mm`."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        torch.mm(a, b, out=out)
        best = min(best, time.process_time() - start)
    return 2 * n**3 / best / 1e9


def _gemm_flops(name: str, shapes: list[list[int]]) -> float:
    """2 m n k of one GEMM call from the profiler's input shapes (addmm / baddbmm: bias first)."""
    first, second = shapes[:2] if name in ("aten::mm", "aten::bmm") else shapes[1:3]
    batch = first[0] if len(first) == 3 else 1
    return 2.0 * batch * first[-2] * first[-1] * second[-1]


def _op_group(event: Any) -> str:
    """Which part of a training step one profiled op belongs to (by its name or its caller)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer.step"):
            return "AdamW"
        parent = parent.cpu_parent
    name = event.name
    if name in GEMM_OPS:
        return "GEMM"
    if "scaled_dot_product" in name:
        return "attention"
    if "gelu" in name:
        return "GELU"
    if "layer_norm" in name:
        return "LayerNorm"
    if name in ("aten::copy_", "aten::cat", "aten::clone", "aten::contiguous", "aten::fill_"):
        return "copies"
    return "other elementwise"


def _profile_step(step: Any) -> dict[str, Any]:
    """One profiled step: the share of self time per group, the FLOPs of its GEMMs and their distinct
    calls (the profiler's times are wall-clock and its per-op overhead weighs on small ops, so the
    shares are indicative only; rates come from CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    groups: dict[str, float] = {}
    gemm_flops = 0.0
    gemm_calls: dict[tuple[str, tuple[tuple[int, ...], ...]], int] = {}
    for event in prof.events():
        seconds = event.self_cpu_time_total / 1e6
        if seconds <= 0:
            continue
        group = _op_group(event)
        groups[group] = groups.get(group, 0.0) + seconds
        if event.name in GEMM_OPS and group == "GEMM":
            gemm_flops += _gemm_flops(event.name, event.input_shapes)
            key = (event.name, tuple(tuple(shape) for shape in event.input_shapes if shape))
            gemm_calls[key] = gemm_calls.get(key, 0) + 1
    total = sum(groups.values())
    return {
        "self_s": total,
        "share": {k: v / total for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
        "gemm_GFLOP": gemm_flops / 1e9,
        "gemm_calls": gemm_calls,
    }


def _replay_gemms(calls: dict[tuple[str, tuple[tuple[int, ...], ...]], int], repeats: int = 3) -> float:
    """CPU seconds the step's GEMMs take on their own: each distinct call (op and shapes) timed alone,
    best of `repeats`, on contiguous operands (the step's own may be transposed views), times its count."""
    total = 0.0
    for (name, shapes), count in calls.items():
        operands = [torch.randn(*shape) for shape in shapes]
        op = getattr(torch, name.split("::")[1])
        op(*operands)
        best = float("inf")
        for _ in range(repeats):
            start = time.process_time()
            op(*operands)
            best = min(best, time.process_time() - start)
        total += count * best
    return total


def _attention_flops(config: dict[str, Any], batch: int) -> float:
    """Useful FLOPs of a step's attention (QK^T and PV, 4 B N^2 D a layer forward; backward 2x)."""
    tokens = (config["input_size"] // config["patch_size"]) ** 2
    return 3 * config["depth"] * 4.0 * batch * tokens**2 * config["hidden_size"]


def _gemm_peak(quick: bool) -> dict[str, Any]:
    """How close a DiT-S/2 fp32 training step comes to this thread's GEMM peak, eager and compiled.

    Useful FLOPs of a step = its GEMMs (counted from the profiled shapes) + attention (analytic);
    utilisation = useful FLOPs / step CPU time / the peak (best n^3 fp32 `torch.mm`, n = 2048).
    """
    side = 16 if quick else 32
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ceilings = {n: _gemm_ceiling(n) for n in ((512, 1024) if quick else (1024, 2048))}
        peak = max(ceilings.values())
        config, batch = _dit_s_inputs(side)
        eager = _dit_s_train_step(config, batch, None, False)[1]
        compiled_step = _dit_s_train_step(config, batch, None, True)[1]
        eager()
        start = time.perf_counter()
        compiled_step()  # compiles (forward and backward graphs)
        compile_s = time.perf_counter() - start
        profile = _profile_step(eager)
        gemm_alone_s = _replay_gemms(profile.pop("gemm_calls"))
        steps = {"eager": eager, "torch.compile": compiled_step}
        timings = interleaved_timings(steps, repeats=2 if quick else 5, warmup=1, clock=time.process_time)
    finally:
        torch.set_num_threads(threads)
    useful = profile["gemm_GFLOP"] * 1e9 + _attention_flops(config, len(batch[0]))
    rows = []
    for name, timing in timings.items():
        seconds = timing["median"]
        rows.append(
            {
                "candidate": f"dit_s fp32 {name}",
                "latent": f"{side}x{side}x4",
                "batch": len(batch[0]),
                "cpu_s": seconds,
                "cpu_s_min": timing["min"],
                "cpu_s_max": timing["max"],
                "useful_GFLOPs": useful / seconds / 1e9,
                "pct_of_gemm_peak": 100 * useful / seconds / 1e9 / peak,
                "time_x_eager": seconds / timings["eager"]["median"],
                "time_x_eager_per_round": round_ratios(timing["samples"], timings["eager"]["samples"]),
            }
        )
    return {
        "rows": rows,
        "gemm_peak_GFLOPs": peak,
        "gemm_ceilings_GFLOPs": {f"{n}^3": v for n, v in ceilings.items()},
        "useful_GFLOP_per_step": useful / 1e9,
        "attention_GFLOP_per_step": _attention_flops(config, len(batch[0])) / 1e9,
        "eager_profile": profile,
        # the step's GEMMs replayed alone (each distinct shape, best of 3): their own rate and time
        "gemm_alone_s": gemm_alone_s,
        "gemm_alone_GFLOPs": profile["gemm_GFLOP"] / gemm_alone_s,
        "gemm_alone_pct_of_peak": 100 * profile["gemm_GFLOP"] / gemm_alone_s / peak,
        "gemm_alone_share_of_eager_step": gemm_alone_s / timings["eager"]["median"],
        "compile_s": compile_s,
        "target_pct": 80,
        "note": "CPU time of one thread; useful FLOPs = the GEMMs the eager step runs (from the "
        "profiler's shapes) + attention's QK^T and PV (backward counted 2x forward); peak = the best "
        "fp32 n^3 torch.mm of this thread",
    }


def _adamw_kernels(quick: bool) -> dict[str, Any]:
    """The Trainer's fused CPU AdamW against torch's CPU default (a for-loop over tensors): a digits
    `Trainer.train_step` of dit_t with each, interleaved, and DiT-S/2's optimizer step alone with the
    largest parameter difference after a few steps from equal states and gradients."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = load_dataset("digits")
        generator = torch.Generator().manual_seed(0)
        index = torch.randint(len(data), (64,), generator=generator)
        x0, y = data.images[index], data.labels[index]
        with tempfile.TemporaryDirectory() as out:
            fused = _trainer("dit_t", 64, out, "cpu")
            loop = _trainer("dit_t", 64, out, "cpu")
            groups = [  # the same groups, without the kernel choice they were made with
                {k: v for k, v in g.items() if k not in ("fused", "foreach")}
                for g in loop.optimizer.param_groups
            ]
            loop.optimizer = torch.optim.AdamW(groups, fused=False, foreach=False)
            steps = 3 if quick else 10
            calls = {
                name: (lambda t=trainer: [t.train_step(x0, y) for _ in range(steps)])
                for name, trainer in (("fused AdamW", fused), ("for-loop AdamW", loop))
            }
            trainer_timings = interleaved_timings(
                calls, repeats=3 if quick else 7, warmup=1, clock=time.process_time
            )
        config, _ = _dit_s_inputs(16 if quick else 32)
        torch.manual_seed(0)
        net = DiT(**config, in_channels=4, num_classes=1000, learn_sigma=True)
        grads = [torch.randn_like(p) for p in net.parameters()]
        copies = {name: [p.detach().clone() for p in net.parameters()] for name in ("fused", "loop")}
        optimizers = {
            "fused": torch.optim.AdamW(copies["fused"], lr=1e-3, weight_decay=0.01, fused=True),
            "loop": torch.optim.AdamW(copies["loop"], lr=1e-3, weight_decay=0.01, foreach=False),
        }

        def stepper(name: str) -> Any:
            def step() -> None:
                for p, g in zip(copies[name], grads):
                    p.grad = g
                optimizers[name].step()

            return step

        optimizer_timings = interleaved_timings(
            {name: stepper(name) for name in optimizers},
            repeats=3 if quick else 7,
            warmup=1,
            clock=time.process_time,
        )
        difference = max((a - b).abs().max().item() for a, b in zip(copies["fused"], copies["loop"]))
    finally:
        torch.set_num_threads(threads)
    rows = []
    for what, timings, base in (
        ("dit_t Trainer.train_step (digits, batch 64)", trainer_timings, "for-loop AdamW"),
        ("DiT-S/2 optimizer step alone (33M parameters)", optimizer_timings, "loop"),
    ):
        for name, timing in timings.items():
            rows.append(
                {
                    "what": what,
                    "candidate": name,
                    "cpu_s": timing["median"] / (steps if what.startswith("dit_t") else 1),
                    "time_x_default": timing["median"] / timings[base]["median"],
                    "per_round": round_ratios(timing["samples"], timings[base]["samples"]),
                }
            )
    return {
        "rows": rows,
        "dit_s_max_abs_param_difference": difference,
        "dit_s_steps_compared": 4 if quick else 8,  # the warm-up round and the timed ones
        "note": "CPU time, one thread; cpu_s per step; the parameter difference after the warm-up and "
        "timed steps from equal parameters and gradients",
    }


def _compile_gram_check() -> dict[str, Any]:
    """A torch.compile'd dit_t (fp32, K = 5) against the eager net: the Gram matrix and built update of
    a capture, and the gradients of Nash-MTL's update step and of its held step (no capture: there the
    compiled forward runs)."""

    torch.manual_seed(0)
    eager = DiT(
        input_size=8, patch_size=2, in_channels=1, hidden_size=128, depth=4, num_heads=4, num_classes=10
    )
    with torch.no_grad():
        for p in eager.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    compiled = DiT(**eager.config)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile()
    generator = torch.Generator().manual_seed(1)
    cluster = torch.arange(20) % 5
    x = torch.randn(20, 1, 8, 8, generator=generator)
    t = cluster * 200 + torch.randint(0, 200, (20,), generator=generator)
    y = torch.randint(0, 10, (20,), generator=generator)

    def losses(net: torch.nn.Module) -> torch.Tensor:
        per_sample = net(x, t, y).pow(2).mean(dim=(1, 2, 3))
        return torch.zeros(5).index_add(0, cluster, per_sample) / 4

    results, warned = {}, {}
    for name, net in (("eager", eager), ("compiled", compiled)):
        net.eval()  # no label dropout: the same forward every time
        params = [p for p in net.parameters() if p.requires_grad]
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with GramCapture(net, cluster, 5) as capture:
                    values = losses(net)
                gram = capture.gram(values.sum(), params, keep="auto")
                update = torch.cat([u.reshape(-1) for u in capture.update(mtl.imtl_weights(gram))])
                balancer = mtl.build("nash", 5, update_every=2)  # an update step, then a held step
                step_grads = []
                for _ in range(2):
                    net.zero_grad(set_to_none=True)
                    with balancer.capture(net, cluster):
                        values = losses(net)
                    balancer.backward(values, params)
                    step_grads.append(torch.cat([p.grad.reshape(-1) for p in params]))
            warned[name] = any("GramCapture" in str(w.message) for w in caught)
            results[name] = (gram, update, *step_grads)
        except Exception as error:  # a compiled forward the hooks cannot follow is the finding itself
            return {"exact": False, "error": f"{type(error).__name__}: {error}"[:500]}
    eager_r, compiled_r = results["eager"], results["compiled"]
    errors = {
        "gram_max_rel_err": float((compiled_r[0] - eager_r[0]).abs().max() / eager_r[0].abs().max()),
        "update_rel_err": float((compiled_r[1] - eager_r[1]).norm() / eager_r[1].norm()),
        "nash_update_step_grad_rel_err": float((compiled_r[2] - eager_r[2]).norm() / eager_r[2].norm()),
        "nash_held_step_grad_rel_err": float((compiled_r[3] - eager_r[3]).norm() / eager_r[3].norm()),
    }
    return {
        **errors,
        "exact": all(value < 1e-4 for value in errors.values()),
        "capture_ran_eagerly": warned["compiled"] and not warned["eager"],
        "note": "fp32: compiled kernels round differently; 'exact' = every error within 1e-4 relative. A "
        "capture around the compiled net runs its forward eagerly (force_eager, warned once); the held "
        "step runs the compiled forward",
    }


def _ddpm_overhead(quick: bool) -> dict[str, Any]:
    """The zoo's DDPM training step against a hand-written one on copies of one net, same batch/t/noise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = load_dataset("digits")
        batch, steps = 64, 3 if quick else 10
        generator = torch.Generator().manual_seed(0)
        index = torch.randint(len(data), (batch,), generator=generator)
        x0, y = data.images[index], data.labels[index]
        t = torch.randint(0, 1000, (batch,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        with tempfile.TemporaryDirectory() as out:
            trainer = _trainer(
                "dit_t", batch, out, "cpu", lr=1e-4, warmup=0, overrides={"learn_sigma": False}
            )
            model = copy.deepcopy(trainer.model)
            model_optimizer = torch.optim.AdamW(model.grad_params(), lr=1e-4)
            net = copy.deepcopy(trainer.model.net)
            net_optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
            diffusion = trainer.model.diffusion
            root_a = diffusion.sqrt_alphas_cumprod.float()  # the DDPM alpha-bar tables
            root_1ma = diffusion.sqrt_one_minus_alphas_cumprod.float()

            def hand_loss() -> torch.Tensor:
                x_t = root_a[t].view(-1, 1, 1, 1) * x0 + root_1ma[t].view(-1, 1, 1, 1) * noise
                return (net(x_t, t, y) - noise).pow(2).mean()

            # exactness, from the same weights and the same label-dropout draw
            torch.manual_seed(5)
            reference = hand_loss()
            reference.backward()
            torch.manual_seed(5)
            out_zoo = model.loss(x0, y, t=t, noise=noise)
            model.backward(out_zoo)
            pairs = [(a, b) for a, b in zip(model.net.parameters(), net.parameters()) if b.requires_grad]
            if any((a.grad is None) != (b.grad is None) for a, b in pairs):
                raise RuntimeError("the zoo step and the hand-written step reached different parameters")
            grad_err = max(
                float((a.grad - b.grad).abs().max() / b.grad.abs().max().clamp_min(1e-30))
                for a, b in pairs
                if b.grad is not None
            )
            torch.manual_seed(5)
            trainer_loss = trainer.train_step(x0, y, t=t, noise=noise)["loss"]
            exactness = {
                "hand_loss": float(reference),
                "model_loss": float(out_zoo.total),
                "trainer_loss": trainer_loss,
                "model_grad_max_rel_err": grad_err,
            }
            model_optimizer.zero_grad(set_to_none=True)
            net_optimizer.zero_grad(set_to_none=True)

            def hand() -> None:
                for _ in range(steps):
                    net_optimizer.zero_grad(set_to_none=True)
                    hand_loss().backward()
                    net_optimizer.step()

            def zoo_step() -> None:
                for _ in range(steps):
                    model_optimizer.zero_grad(set_to_none=True)
                    model.backward(model.loss(x0, y, t=t, noise=noise))
                    model_optimizer.step()

            def trainer_step() -> None:
                for _ in range(steps):
                    trainer.train_step(x0, y, t=t, noise=noise)

            calls = {
                "hand-written eps-MSE step": hand,
                "model.loss step": zoo_step,
                "Trainer.train_step": trainer_step,
            }
            timings = interleaved_timings(calls, repeats=3 if quick else 9, warmup=1, clock=time.process_time)
    finally:
        torch.set_num_threads(threads)
    adds = {
        "hand-written eps-MSE step": "q_sample from the alpha-bar tables, net, MSE, backward, AdamW",
        "model.loss step": "+ the zoo's slots: timestep check, clusters (k=1), process, balancer (linear)",
        "Trainer.train_step": "+ the trainer: lr schedule, grad-norm, EMA update, logs (floats)",
    }
    base = timings["hand-written eps-MSE step"]
    rows = [
        {
            "candidate": name,
            "model": "dit_t (learn_sigma False), digits 8x8x1",
            "batch": batch,
            "steps_per_call": steps,
            "cpu_s_per_step": timing["median"] / steps,
            "cpu_s_per_step_min": timing["min"] / steps,
            "cpu_s_per_step_max": timing["max"] / steps,
            "time_x_hand": timing["median"] / base["median"],
            "time_x_hand_per_round": round_ratios(timing["samples"], base["samples"]),
            "adds": adds[name],
        }
        for name, timing in timings.items()
    ]
    return {
        "rows": rows,
        "exactness": exactness,
        "threads": 1,
        "repeats": 3 if quick else 9,
        "timings": timings,
    }


def record_digits_run(run_dir: str | Path) -> dict[str, Any]:
    """Add a finished `zoo train ... --data digits` run (log + final grid) to the benchmark JSON."""
    run_dir = Path(run_dir)
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    last = records[-1]
    grid = RESULTS_DIR / "train_digits_samples.png"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "final" / "samples.png", grid)
    command = _train_command(run_dir)
    summary = {
        "command": command.strip(),
        "steps": last["step"],
        "wall_time_s": last["elapsed"],
        "mean_samples_per_s": sum(r["samples_per_s"] for r in records) / len(records),
        "final_loss": last["loss"],
        "final_cluster_losses": last["cluster_losses"],
        "sample_grid": str(grid.relative_to(RESULTS_DIR.parent.parent)),
    }
    return _record("digits_run", summary)


def _record(key: str, value: dict[str, Any]) -> dict[str, Any]:
    """Store one entry of train.json (the others kept), print it and return it."""
    path = RESULTS_DIR / f"{NAME}.json"
    payload = json.loads(path.read_text()) if path.is_file() else {"benchmark": NAME}
    payload[key] = value
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(value, indent=2))
    return value


def _train_command(run_dir: Path) -> str:
    """The `zoo train ...` command a finished run's card records."""
    lines = (run_dir / "final" / "README.md").read_text().splitlines()
    return next(line.strip() for line in lines if line.strip().startswith("zoo train"))


def _late_losses(run_dir: Path, last_steps: int = 500) -> tuple[list[float], float]:
    """The logged losses of a run's last `last_steps` steps and its mean samples/s."""
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    final = records[-1]["step"]
    late = [r["loss"] for r in records if r["step"] > final - last_steps]
    return late, statistics.fmean(r["samples_per_s"] for r in records)


def _step_fids(leaderboard: Path, recipe: str) -> tuple[dict[int, dict[int, float]], dict[str, Any]]:
    """{step: {seed: FID}} of a recipe's curve rows in a leaderboard JSON, and one row's protocol."""
    payload = json.loads(Path(leaderboard).read_text())
    fids: dict[int, dict[int, float]] = {}
    protocol: dict[str, Any] = {}
    for row in payload["curves"]:
        if row["recipe"] == recipe:
            fids.setdefault(row["step"], {})[row["seed"]] = row["fid_classifier"]
            protocol = {k: v for k, v in row["protocol"].items() if k not in ("model", "weights_sha256")}
    return fids, protocol


def record_bf16_quality(
    bf16_run: Path,
    fp32_runs: list[Path],
    bf16_leaderboard: Path,
    fp32_leaderboard: Path,
    recipe: str = "dit_t",
) -> dict[str, Any]:
    """bf16-autocast training against fp32 at equal steps (same recipe, data, seed 0 and budget): the late
    training loss and the FID of every checkpoint (the bf16 run against the fp32 seeds' mean and
    spread), written as `bf16_quality` into train.json."""
    bf16_late, bf16_speed = _late_losses(bf16_run)
    fp32 = [_late_losses(run) for run in fp32_runs]
    bf16_fids, protocol = _step_fids(bf16_leaderboard, recipe)
    fp32_fids, fp32_protocol = _step_fids(fp32_leaderboard, recipe)
    steps = []
    for step in sorted(set(bf16_fids) & set(fp32_fids)):
        seeds = list(fp32_fids[step].values())
        mean, std = statistics.fmean(seeds), statistics.stdev(seeds) if len(seeds) > 1 else float("nan")
        steps.append(
            {
                "step": step,
                "bf16_fid": bf16_fids[step][0],
                "fp32_fid_seeds": fp32_fids[step],
                "fp32_fid_mean": mean,
                "fp32_fid_std": std,
                "z": (bf16_fids[step][0] - mean) / std if std > 0 else None,
            }
        )
    fp32_late_means = [statistics.fmean(late) for late, _ in fp32]
    result = {
        "recipe": recipe,
        "bf16_run": str(bf16_run),
        "fp32_runs": [str(run) for run in fp32_runs],
        "bf16_command": _train_command(bf16_run),
        "late_loss": {
            "what": "mean logged loss over the last 500 of 2,000 steps (one batch every 50 steps)",
            "bf16": statistics.fmean(bf16_late),
            "fp32_seeds": fp32_late_means,
            "fp32_mean": statistics.fmean(fp32_late_means),
            "fp32_std": statistics.stdev(fp32_late_means) if len(fp32_late_means) > 1 else None,
        },
        "samples_per_s": {"bf16": bf16_speed, "fp32": [speed for _, speed in fp32]},
        "fid_by_step": steps,
        "protocol": protocol,
        "protocols_equal": {k: v for k, v in protocol.items() if k != "git_commit"}
        == {k: v for k, v in fp32_protocol.items() if k != "git_commit"},
    }
    return _record("bf16_quality", result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    parser.add_argument("--digits-run", default=None, help="record a finished digits run folder instead")
    parser.add_argument(
        "--bf16-quality",
        nargs=4,
        metavar=("BF16_RUN", "FP32_RUNS", "BF16_LEADERBOARD", "FP32_LEADERBOARD"),
        default=None,
        help="record a bf16 run against fp32 runs (FP32_RUNS comma-separated) from their leaderboard JSONs",
    )
    arguments = parser.parse_args()
    if arguments.bf16_quality:
        bf16_run, fp32_runs, bf16_board, fp32_board = arguments.bf16_quality
        record_bf16_quality(
            Path(bf16_run), [Path(r) for r in fp32_runs.split(",")], Path(bf16_board), Path(fp32_board)
        )
    elif arguments.digits_run:
        record_digits_run(arguments.digits_run)
    else:
        run(quick=arguments.quick, sections=[name for name in arguments.sections.split(",") if name])
