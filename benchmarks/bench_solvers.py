"""FID against NFE for the solvers of both processes on the shipped digits (or, `--data mnist`, MNIST)
models, under the leaderboard protocol (zoo.eval.leaderboard.Evaluator: class-balanced labels, the data
set's classifier's features against its test split, no guidance, seeded sampling): the Gaussian diffusion's ddpm, ddim, dpm++2m (uniform /
Karras grid) on dit_* models, flow matching's euler, heun and sde on sit_* models.

Every cell is one (model, solver, NFE, sampling seed). The NFE of a cell is measured (model.sample's
info), not assumed: the steps that give an NFE come from the solver's measured cost, nfe(N) = a + b N
(two one-image probes, `nfe_per_step`); Heun makes two net calls per step (b = 2), so it cannot hit an
odd NFE (5) and is left out there. The targets, judged on the mean over the sampling seeds `--seeds`
(the spread is their sample std; the rest of the curve uses the first seed):

- ddpm (issue 18): DPM-Solver++ (uniform grid) at 20 NFE within 10 % of DDPM-250's FID;
- flow (issue 18): Heun at 20 NFE (10 steps) within 10 % of Heun's 250-step FID (500 NFE; 250 is SiT's
  default step count).

    python benchmarks/bench_solvers.py [--quick] [--models dit_t.digits,sit_t.digits,...] [--samples N]
                                       [--seeds 0,1,2] [--resume] [--data mnist]

`--models` also takes model folders (`local-dir:runs/ladder/sit_t_p4/seed0/final`). Writes
benchmarks/results/solvers.json (MNIST: solvers_mnist.json; rewritten after every cell, with the command
and timings) and benchmarks/results/solvers_fid_vs_nfe.png (solvers_mnist_fid_vs_nfe.png) (one panel per model; each solver its own colour and marker,
flow solvers dashed). `--resume` keeps the cells already in the JSON (same sample count) and runs the
missing ones only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zoo
from benchmarks.common import RESULTS_DIR, format_table, machine_info  # noqa: E402
from zoo.diffusion import get_solver
from zoo.eval.leaderboard import Evaluator, LeaderboardSettings, model_process, shipped_entry
from zoo.hub import get_pretrained_cfg, is_location
from zoo.layout import sha256_of

#: the NFE of the curve (issue 18)
NFES = (5, 10, 20, 50, 100, 250)
#: (label, solver, options, largest NFE on the curve, process) of the curve: every solver to 250 NFE
SOLVERS = (
    ("ddpm", "ddpm", {}, 250, "ddpm"),
    ("ddim", "ddim", {}, 250, "ddpm"),
    ("dpm++2m", "dpm++2m", {"grid": "uniform"}, 250, "ddpm"),
    ("dpm++2m-karras", "dpm++2m", {"grid": "karras"}, 250, "ddpm"),
    ("euler", "euler", {}, 250, "flow"),
    ("heun", "heun", {}, 250, "flow"),
    ("sde", "sde", {}, 250, "flow"),
)
LABEL_PROCESS = {label: process for label, *_, process in SOLVERS}
#: per process: the cells the target compares, (label, NFE): the reference first, then the fast one;
#: run with every seed
TARGETS = {
    "ddpm": (("ddpm", 250), ("dpm++2m", 20)),
    "flow": (("heun", 500), ("heun", 20)),  # Heun 250 steps = 500 NFE; 10 steps = 20 NFE
}
TARGET_TEXT = {
    "ddpm": "dpm++2m (uniform grid) at 20 NFE within 10 % of ddpm at 250 NFE (mean over seeds)",
    "flow": "heun at 20 NFE (10 steps) within 10 % of heun with 250 steps (500 NFE) (mean over seeds)",
}
TARGET = TARGETS["ddpm"]  # the DDPM target, as before
DEFAULT_MODELS = ("dit_t.digits", "dit_t_dtr_nash_k5.digits", "sit_t.digits", "sit_t_nash_k5.digits")
#: per data set: the default models and the stem of the files written (the digits' keep their old names)
DATA = {
    "digits": {"models": DEFAULT_MODELS, "stem": "solvers"},
    "mnist": {"models": ("sit_t_p4.mnist", "sit_t_p4_nash_k5.mnist"), "stem": "solvers_mnist"},
}
#: the plot's colour and marker of each solver label (flow solvers also dashed)
STYLES = {
    "ddpm": ("#1f77b4", "o"),
    "ddim": ("#ff7f0e", "s"),
    "dpm++2m": ("#2ca02c", "^"),
    "dpm++2m-karras": ("#d62728", "D"),
    "euler": ("#9467bd", "v"),
    "heun": ("#8c564b", "P"),
    "sde": ("#e377c2", "X"),
}


def _cells(
    models: list[str], nfes: list[int], seeds: list[int], target_only: bool, processes: dict[str, str]
) -> list[tuple]:
    """(model, label, nfe, seed): the target cells of the model's process with every seed first (per
    model), then its process's curve by increasing NFE (every solver at 5, then at 10, ...: a run cut
    short loses the costly end alike)."""
    cells = []
    for model in models:
        process = processes[model]
        target = TARGETS[process]
        for seed in seeds:
            cells += [(model, label, nfe, seed) for label, nfe in target]
        if not target_only:
            for nfe in sorted(nfes):
                cells += [
                    (model, label, nfe, seeds[0])
                    for label, _, _, largest, owner in SOLVERS
                    if owner == process and (label, nfe) not in target and nfe <= largest
                ]
    return cells


def _process_of_cells(cells: list[dict[str, Any]], model: str) -> str:
    for c in cells:
        if c["model"] == model:
            return c.get("process") or LABEL_PROCESS[c["solver_label"]]
    raise KeyError(model)


def summarize(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: the two FIDs its process's target compares, mean and sample std over seeds, the ratio
    and whether the fast one is within 10 %."""
    out = {}
    for model in sorted({c["model"] for c in cells}):
        process = _process_of_cells(cells, model)
        entry: dict[str, Any] = {"process": process, "target": TARGET_TEXT[process]}
        for label, nfe in TARGETS[process]:
            fids = [
                c["fid"] for c in cells if (c["model"], c["solver_label"], c["nfe"]) == (model, label, nfe)
            ]
            entry[f"{label}@{nfe}"] = {
                "fid_mean": statistics.fmean(fids) if fids else None,
                "fid_std": statistics.stdev(fids) if len(fids) > 1 else None,
                "seeds": len(fids),
                "fids": fids,
            }
        reference, fast = (entry[f"{label}@{nfe}"]["fid_mean"] for label, nfe in TARGETS[process])
        if reference is not None and fast is not None:
            entry["ratio"] = fast / reference
            entry["within_10_percent"] = bool(fast <= 1.1 * reference)
        out[model] = entry
    return out


def plot(cells: list[dict[str, Any]], path: Path, samples: int, data: str = "digits") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({c["model"] for c in cells}, key=lambda m: (_process_of_cells(cells, m), m))
    columns = min(2, len(models))
    rows = math.ceil(len(models) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6.2 * columns, 4.6 * rows), squeeze=False)
    for axis in axes.flat[len(models) :]:
        axis.set_visible(False)
    for axis, model in zip(axes.flat, models):
        process = _process_of_cells(cells, model)
        shown = []
        for label, *_, owner in SOLVERS:
            by_nfe: dict[int, list[float]] = {}
            for c in cells:
                if c["model"] == model and c["solver_label"] == label:
                    by_nfe.setdefault(c["nfe"], []).append(c["fid"])
            if not by_nfe:
                continue
            nfes = sorted(by_nfe)
            shown += nfes
            means = [statistics.fmean(by_nfe[n]) for n in nfes]
            spread = [statistics.stdev(by_nfe[n]) if len(by_nfe[n]) > 1 else 0.0 for n in nfes]
            colour, marker = STYLES[label]
            axis.errorbar(
                nfes,
                means,
                yerr=spread,
                color=colour,
                marker=marker,
                linestyle="--" if owner == "flow" else "-",
                capsize=3,
                label=f"{label} ({owner})",
            )
        ticks = sorted(set(NFES) | set(shown))
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xticks(ticks)
        axis.set_xticklabels([str(n) for n in ticks])
        axis.set_xlabel("NFE per image (measured)")
        axis.set_ylabel(f"FID ({data} classifier features, {samples} samples)")
        axis.set_title(f"{model} ({process})")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    figure.suptitle(
        "FID vs NFE (ddpm solvers solid, flow dashed; bars: std over sampling seeds)",
        fontsize=10,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def nfe_per_step(model: Any, solver: str, options: dict[str, Any]) -> tuple[float, float, int]:
    """(a, b, least steps) of the solver's measured cost on `model`, nfe(N) = a + b N: two one-image
    draws at the least steps it takes and one more (model.sample's counted NFE)."""
    least = getattr(get_solver(model_process(model), solver), "min_steps", 1)
    label = torch.zeros(1, dtype=torch.long)
    counts = []
    for steps in (least, least + 1):
        _, info = model.sample(label, steps=steps, sampler=solver, return_info=True, **options)
        counts.append(info["nfe"])
    slope = counts[1] - counts[0]
    return counts[0] - slope * least, slope, least


def steps_for(nfe: int, cost: tuple[float, float, int]) -> int | None:
    """The steps that cost exactly `nfe` per image, or None when the solver cannot hit it."""
    offset, slope, least = cost
    steps = (nfe - offset) / slope
    return int(steps) if float(steps).is_integer() and steps >= least else None


def load(name: str) -> tuple[Any, str, str]:
    """(model, weights sha256, process) of a shipped name or a `local-dir:` model folder."""
    if is_location(name):
        model = zoo.create(name).eval()
        folder = Path(name.removeprefix("local-dir:"))
        return model, sha256_of(folder / "model.safetensors"), model_process(model)
    model = zoo.create(name, pretrained=True).eval()
    return model, get_pretrained_cfg(name).sha256, model_process(model)


def run(
    quick: bool = False,
    models: list[str] | None = None,
    samples: int | None = None,
    seeds: list[int] | None = None,
    nfes: list[int] | None = None,
    target_only: bool = False,
    out: Path = RESULTS_DIR,
    command: str | None = None,
    resume: bool = False,
    data: str = "digits",
) -> dict[str, Any]:
    if data not in DATA:
        raise ValueError(f"unknown data {data!r}; expected one of {sorted(DATA)}")
    defaults = DATA[data]["models"]
    models = list(models or (defaults[:1] if quick else defaults))
    samples = samples or (100 if quick else LeaderboardSettings().samples)
    seeds = list(seeds if seeds is not None else ((0,) if quick else (0, 1, 2)))
    nfes = list(nfes or ((5, 10, 20) if quick else NFES))
    available = zoo.list_pretrained(f"*.{data}")
    missing = sorted(m for m in set(models) - set(available) if not is_location(m))
    if missing:
        raise ValueError(
            f"no shipped weights {missing}; the {data} models are {available} (or pass local-dir:FOLDER)"
        )
    processes = {
        m: (load(m)[2] if is_location(m) else shipped_entry(m).process) for m in models
    }  # before any sampling: a process without a target is refused here
    unknown = {m: p for m, p in processes.items() if p not in TARGETS}
    if unknown:
        raise ValueError(f"no solvers benchmark for the process of {unknown}; it covers {sorted(TARGETS)}")
    base = LeaderboardSettings(data=data, samples=samples, batch=samples)
    evaluator = Evaluator(base)
    options = {label: (solver, extra) for label, solver, extra, *_ in SOLVERS}
    payload: dict[str, Any] = {
        "command": command or "python benchmarks/bench_solvers.py" + (" --quick" if quick else ""),
        "machine": machine_info(),
        "protocol": {
            "what": "zoo.eval.leaderboard.Evaluator (the leaderboard protocol): class-balanced labels, no "
            f"guidance, FID of the {data} classifier's features against {data}:test",
            "samples": samples,
            "leaderboard_samples": LeaderboardSettings().samples,
            "reduced": samples != LeaderboardSettings().samples,
            "seeds": seeds,
            "curve_seed": seeds[0],
            "target": TARGET_TEXT["ddpm"],
            "targets": TARGET_TEXT,
            "nfe": "measured per cell; the steps of an NFE from the solver's measured cost a + b * steps",
        },
        "cells": [],
    }
    if payload["protocol"]["reduced"]:
        payload["protocol"]["note"] = (
            f"{samples} samples per cell instead of the leaderboard's {LeaderboardSettings().samples} "
            "(CPU time); FIDs are comparable within this file, not to the leaderboard's"
        )
    out = Path(out)
    json_path = out / f"{DATA[data]['stem']}.json"
    png_path = out / f"{DATA[data]['stem']}_fid_vs_nfe.png"
    payload["protocol"]["data"] = data
    done = set()
    if resume and json_path.is_file():  # keep the cells of an earlier run of the same protocol
        earlier = json.loads(json_path.read_text())
        if earlier["protocol"]["samples"] != samples:
            raise ValueError(f"--resume: {json_path} has {earlier['protocol']['samples']} samples")
        payload["cells"] = earlier["cells"]
        payload["earlier_commands"] = [*earlier.get("earlier_commands", []), earlier["command"]]
        payload["unreachable"] = earlier.get("unreachable", [])
        done = {(c["model"], c["solver_label"], c["nfe"], c["seed"]) for c in earlier["cells"]}
    cache: dict[str, Any] = {}
    costs: dict[tuple[str, str], tuple[float, float, int]] = {}
    for model_name, label, nfe, seed in _cells(models, nfes, seeds, target_only, processes):
        if (model_name, label, nfe, seed) in done:
            continue
        if model_name not in cache:
            cache.clear()
            cache[model_name] = load(model_name)
        model, sha, process = cache[model_name]
        solver, extra = options[label]
        if (model_name, label) not in costs:
            costs[(model_name, label)] = nfe_per_step(model, solver, extra)
        steps = steps_for(nfe, costs[(model_name, label)])
        if steps is None:
            offset, slope, _ = costs[(model_name, label)]
            note = f"{model_name} {label}: no step count costs {nfe} NFE (measured {offset:g} + {slope:g} * steps)"
            if note not in payload.setdefault("unreachable", []):
                payload["unreachable"].append(note)
            print(note, flush=True)
            continue
        evaluator.settings = dataclasses.replace(
            base, sampler=solver, steps=steps, seed=seed, grid=extra.get("grid")
        )
        start = time.perf_counter()
        row = evaluator.evaluate(model, model_name, sha)
        seconds = time.perf_counter() - start
        protocol = row["protocol"]
        if protocol["nfe"] != nfe or protocol["process"] != process:
            raise RuntimeError(f"{label} with {steps} steps cost {protocol['nfe']} NFE per image, not {nfe}")
        cell = {
            "model": model_name,
            "process": process,
            "solver_label": label,
            "solver": solver,
            "options": extra,
            "steps": steps,
            "nfe": protocol["nfe"],
            "net_calls": protocol["net_calls"],
            "seed": seed,
            "seconds": round(seconds, 2),
            **{k: row[k] for k in ("fid", "kid", "precision", "recall", "class_accuracy") if k in row},
        }
        payload["cells"].append(cell)
        print(
            f"{model_name:<26} {label:<15} NFE {nfe:>3} ({steps} steps) seed {seed}: FID {cell['fid']:.4f} "
            f"({seconds:.0f} s)",
            flush=True,
        )
        payload["summary"] = summarize(payload["cells"])
        out.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(payload, indent=2) + "\n")
        plot(payload["cells"], png_path, samples, data)
    if payload["cells"]:  # also after a --resume that had nothing left to run
        payload["summary"] = summarize(payload["cells"])
        out.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(payload, indent=2) + "\n")
        plot(payload["cells"], png_path, samples, data)
    print(
        format_table(
            [
                {
                    "model": c["model"],
                    "solver": c["solver_label"],
                    "nfe": c["nfe"],
                    "steps": c.get("steps", c["nfe"]),
                    "seed": c["seed"],
                    "fid": c["fid"],
                }
                for c in payload["cells"]
            ]
        )
    )
    print(json.dumps(payload.get("summary", {}), indent=2))
    return payload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one model, 100 samples, NFE 5/10/20, one seed")
    parser.add_argument("--models", default=None, help=f"comma list (default {','.join(DEFAULT_MODELS)})")
    parser.add_argument(
        "--samples", type=int, default=None, help="samples per cell (default the leaderboard's)"
    )
    parser.add_argument("--seeds", default=None, help="sampling seeds of the target cells (default 0,1,2)")
    parser.add_argument("--nfe", default=None, help=f"comma list (default {','.join(map(str, NFES))})")
    parser.add_argument(
        "--target-only",
        action="store_true",
        help="only the target cells (ddpm: DDPM-250 / DPM-Solver++-20; flow: Heun-250-steps / Heun-20-NFE)",
    )
    parser.add_argument("--data", default="digits", choices=sorted(DATA))
    parser.add_argument("--out", default=str(RESULTS_DIR))
    parser.add_argument(
        "--resume", action="store_true", help="keep the cells already in OUT/solvers[_mnist].json"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    run(
        quick=args.quick,
        models=args.models.split(",") if args.models else None,
        samples=args.samples,
        seeds=[int(s) for s in args.seeds.split(",")] if args.seeds else None,
        nfes=[int(n) for n in args.nfe.split(",")] if args.nfe else None,
        target_only=args.target_only,
        out=Path(args.out),
        resume=args.resume,
        data=args.data,
        command=" ".join(["python benchmarks/bench_solvers.py", *map(shlex.quote, argv or sys.argv[1:])]),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
