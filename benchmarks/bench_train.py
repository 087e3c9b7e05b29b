"""Training throughput: samples/s of `dit_t` (and its DTR + UW recipe) on digits with the zoo Trainer.

Sections (`--sections`, default all; a subset replaces only its own entries of the JSON):

* `trainer` -- CPU: fp32, bf16 autocast (`precision="bf16"`) and `torch.compile` (Inductor),
  interleaved after a warm-up round that also pays the compilation. CUDA (when present): bf16 with
  and without torch.compile and gradient checkpointing, with peak memory.
* `dit_s` -- a DiT-S/2 step at 32x32x4 latents (batch 10, forward + eps loss + backward + AdamW,
  this process's CPU time on one thread) in fp32 and bf16 autocast (compiling DiT-S took too long
  for the shared machine).
* `compile_gram` -- whether a compiled net keeps the Gram balancers exact: the Gram matrix and the
  update of a compiled dit_t against the eager one (fp32), and a held step of Nash-MTL (no capture:
  the compiled forward runs) against the eager net's.
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

from benchmarks.common import RESULTS_DIR, format_table, interleaved_timings, peak_memory_bytes, report
from zoo import mtl
from zoo.data import load_dataset
from zoo.train import TrainConfig, Trainer

NAME = "train"
SECTIONS = ("trainer", "dit_s", "compile_gram", "ddpm")


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
        elif section == "compile_gram":
            extra["compile_gram_exactness"] = _compile_gram_check()
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
    if "compile_gram" in sections and "compile_gram_exactness" in extra:
        print("compile + Gram hooks:", extra["compile_gram_exactness"])
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


def _dit_s_step(quick: bool) -> list[dict[str, Any]]:
    """DiT-S/2 at 32x32x4 (16x16 quick), batch 10: fp32 vs bf16 autocast, CPU time on one thread."""

    side, batch = (16 if quick else 32), 10
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 4, side, side, generator=generator)
        noise = torch.randn(batch, 4, side, side, generator=generator)
        t = torch.randint(0, 1000, (batch,), generator=generator)
        y = torch.randint(0, 1000, (batch,), generator=generator)
        config = {"input_size": side, "patch_size": 2, "hidden_size": 384, "depth": 12, "num_heads": 6}

        def make(dtype: torch.dtype | None, compiled: bool):
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

            return step

        steps = {
            "dit_s fp32": make(None, False),
            "dit_s bf16 autocast": make(torch.bfloat16, False),
        }
        first = {name: step() for name, step in steps.items()}  # warm-up: compilation happens here
        timings = interleaved_timings(steps, repeats=3 if quick else 5, warmup=1, clock=time.process_time)
    finally:
        torch.set_num_threads(threads)
    base = timings["dit_s fp32"]["median"]
    return [
        {
            "candidate": name,
            "latent": f"{side}x{side}x4",
            "batch": batch,
            "threads": 1,
            "cpu_s": timing["median"],
            "cpu_s_min": timing["min"],
            "cpu_s_max": timing["max"],
            "time_x_fp32": timing["median"] / base,
            "time_x_fp32_per_round": _ratio_spread(timing["samples"], timings["dit_s fp32"]["samples"]),
            "first_step_loss": first[name],
        }
        for name, timing in timings.items()
    ]


def _ratio_spread(values: list[float], base: list[float]) -> dict[str, float]:
    """Median, min and max over the rounds of values[i] / base[i] (the two were timed in one round)."""
    ratios = sorted(v / b for v, b in zip(values, base))
    return {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1]}


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
            "time_x_hand_per_round": _ratio_spread(timing["samples"], base["samples"]),
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    parser.add_argument("--digits-run", default=None, help="record a finished digits run folder instead")
    arguments = parser.parse_args()
    if arguments.digits_run:
        record_digits_run(arguments.digits_run)
    else:
        run(quick=arguments.quick, sections=[name for name in arguments.sections.split(",") if name])
