"""FID against NFE for the Gaussian diffusion's solvers (ddpm, ddim, dpm++2m uniform / Karras) on the shipped
digits models, under the leaderboard protocol (zoo.eval.leaderboard.Evaluator: class-balanced labels, the
digits classifier's features against digits:test, no guidance, seeded sampling).

Every cell is one (model, solver, NFE, sampling seed); the NFE of a cell is measured (model.sample's
info), not assumed. The target of issue 18, DPM-Solver++ at 20 NFE within 10 % of DDPM-250's FID, is
judged on the mean over the sampling seeds `--seeds` (the spread is their sample std); the rest of the
curve uses the first seed.

    python benchmarks/bench_solvers.py [--quick] [--models dit_t.digits,...] [--samples N] [--seeds 0,1,2]

writes benchmarks/results/solvers.json (rewritten after every cell, with the command and timings) and
benchmarks/results/solvers_fid_vs_nfe.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
from zoo.eval.leaderboard import Evaluator, LeaderboardSettings
from zoo.hub import get_pretrained_cfg

#: the NFE of the curve (issue 18)
NFES = (5, 10, 20, 50, 100, 250)
#: (label, solver, options, largest NFE on the curve) of the curve; the Karras grid stops at 50 NFE (CPU
#: time: with many steps both grids converge to the same ODE solution)
SOLVERS = (
    ("ddpm", "ddpm", {}, 250),
    ("ddim", "ddim", {}, 250),
    ("dpm++2m", "dpm++2m", {"grid": "uniform"}, 250),
    ("dpm++2m-karras", "dpm++2m", {"grid": "karras"}, 50),
)
#: the cells the target compares, run with every seed
TARGET = (("ddpm", 250), ("dpm++2m", 20))
DEFAULT_MODELS = ("dit_t.digits", "dit_t_dtr_nash_k5.digits")


def _cells(models: list[str], nfes: list[int], seeds: list[int], target_only: bool) -> list[tuple]:
    """(model, label, nfe, seed): the target cells with every seed first (per model), then the curve by
    increasing NFE (every solver at 5, then at 10, ...: a run cut short loses the costly end alike)."""
    cells = []
    for model in models:
        for seed in seeds:
            cells += [(model, label, nfe, seed) for label, nfe in TARGET]
        if not target_only:
            for nfe in sorted(nfes):
                cells += [
                    (model, label, nfe, seeds[0])
                    for label, _, _, largest in SOLVERS
                    if (label, nfe) not in TARGET and nfe <= largest
                ]
    return cells


def summarize(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: DDPM-250 and DPM-Solver++-20 FID, mean and sample std over seeds, and the 10 % target."""
    out = {}
    for model in sorted({c["model"] for c in cells}):
        entry: dict[str, Any] = {}
        for label, nfe in TARGET:
            fids = [
                c["fid"] for c in cells if (c["model"], c["solver_label"], c["nfe"]) == (model, label, nfe)
            ]
            entry[f"{label}@{nfe}"] = {
                "fid_mean": statistics.fmean(fids) if fids else None,
                "fid_std": statistics.stdev(fids) if len(fids) > 1 else None,
                "seeds": len(fids),
                "fids": fids,
            }
        reference, fast = (entry[f"{label}@{nfe}"]["fid_mean"] for label, nfe in TARGET)
        if reference is not None and fast is not None:
            entry["ratio"] = fast / reference
            entry["within_10_percent"] = bool(fast <= 1.1 * reference)
        out[model] = entry
    return out


def plot(cells: list[dict[str, Any]], path: Path, samples: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({c["model"] for c in cells})
    figure, axes = plt.subplots(1, len(models), figsize=(6.2 * len(models), 4.6), squeeze=False)
    for axis, model in zip(axes[0], models):
        for label, *_ in SOLVERS:
            by_nfe: dict[int, list[float]] = {}
            for c in cells:
                if c["model"] == model and c["solver_label"] == label:
                    by_nfe.setdefault(c["nfe"], []).append(c["fid"])
            if not by_nfe:
                continue
            nfes = sorted(by_nfe)
            means = [statistics.fmean(by_nfe[n]) for n in nfes]
            spread = [statistics.stdev(by_nfe[n]) if len(by_nfe[n]) > 1 else 0.0 for n in nfes]
            axis.errorbar(nfes, means, yerr=spread, marker="o", capsize=3, label=label)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xticks(list(NFES))
        axis.set_xticklabels([str(n) for n in NFES])
        axis.set_xlabel("NFE per image")
        axis.set_ylabel(f"FID (digits classifier features, {samples} samples)")
        axis.set_title(model)
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    figure.suptitle("FID vs NFE (error bars: sample std over sampling seeds, where several)", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


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
) -> dict[str, Any]:

    models = list(models or (DEFAULT_MODELS[:1] if quick else DEFAULT_MODELS))
    samples = samples or (100 if quick else LeaderboardSettings().samples)
    seeds = list(seeds if seeds is not None else ((0,) if quick else (0, 1, 2)))
    nfes = list(nfes or ((5, 10, 20) if quick else NFES))
    available = zoo.list_pretrained("*digits*")
    missing = sorted(set(models) - set(available))
    if missing:
        raise ValueError(f"no shipped weights {missing}; the digits models are {available}")
    base = LeaderboardSettings(data="digits", samples=samples, batch=samples)
    evaluator = Evaluator(base)
    options = {label: (solver, extra) for label, solver, extra, _ in SOLVERS}
    payload: dict[str, Any] = {
        "command": command or "python benchmarks/bench_solvers.py" + (" --quick" if quick else ""),
        "machine": machine_info(),
        "protocol": {
            "what": "zoo.eval.leaderboard.Evaluator (the leaderboard protocol): class-balanced labels, no "
            "guidance, FID of the digits classifier's features against digits:test",
            "samples": samples,
            "leaderboard_samples": LeaderboardSettings().samples,
            "reduced": samples != LeaderboardSettings().samples,
            "seeds": seeds,
            "curve_seed": seeds[0],
            "target": "dpm++2m (uniform grid) at 20 NFE within 10 % of ddpm at 250 NFE (mean over seeds)",
        },
        "cells": [],
    }
    if payload["protocol"]["reduced"]:
        payload["protocol"]["note"] = (
            f"{samples} samples per cell instead of the leaderboard's {LeaderboardSettings().samples} "
            "(CPU time); FIDs are comparable within this file, not to the leaderboard's"
        )
    out = Path(out)
    done = set()
    if resume and (out / "solvers.json").is_file():  # keep the cells of an earlier run of the same protocol
        earlier = json.loads((out / "solvers.json").read_text())
        if earlier["protocol"]["samples"] != samples:
            raise ValueError(f"--resume: {out / 'solvers.json'} has {earlier['protocol']['samples']} samples")
        payload["cells"] = earlier["cells"]
        payload["earlier_commands"] = [*earlier.get("earlier_commands", []), earlier["command"]]
        done = {(c["model"], c["solver_label"], c["nfe"], c["seed"]) for c in earlier["cells"]}
    cache: dict[str, Any] = {}
    for model_name, label, nfe, seed in _cells(models, nfes, seeds, target_only):
        if (model_name, label, nfe, seed) in done:
            continue
        if model_name not in cache:
            cache.clear()
            cache[model_name] = zoo.create(model_name, pretrained=True).eval()
        solver, extra = options[label]
        evaluator.settings = dataclasses.replace(
            base, sampler=solver, steps=nfe, seed=seed, grid=extra.get("grid")
        )
        start = time.perf_counter()
        row = evaluator.evaluate(cache[model_name], model_name, get_pretrained_cfg(model_name).sha256)
        seconds = time.perf_counter() - start
        protocol = row["protocol"]
        if protocol["nfe"] != nfe:
            raise RuntimeError(f"{label} with {nfe} steps cost {protocol['nfe']} NFE per image")
        cell = {
            "model": model_name,
            "solver_label": label,
            "solver": solver,
            "options": extra,
            "nfe": protocol["nfe"],
            "net_calls": protocol["net_calls"],
            "seed": seed,
            "seconds": round(seconds, 2),
            **{k: row[k] for k in ("fid", "kid", "precision", "recall", "class_accuracy") if k in row},
        }
        payload["cells"].append(cell)
        print(
            f"{model_name:<26} {label:<15} NFE {nfe:>3} seed {seed}: FID {cell['fid']:.4f} ({seconds:.0f} s)",
            flush=True,
        )
        payload["summary"] = summarize(payload["cells"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "solvers.json").write_text(json.dumps(payload, indent=2) + "\n")
        plot(payload["cells"], out / "solvers_fid_vs_nfe.png", samples)
    print(
        format_table(
            [
                {
                    "model": c["model"],
                    "solver": c["solver_label"],
                    "nfe": c["nfe"],
                    "seed": c["seed"],
                    "fid": c["fid"],
                }
                for c in payload["cells"]
            ]
        )
    )
    print(json.dumps(payload["summary"], indent=2))
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
        "--target-only", action="store_true", help="only the DDPM-250 / DPM-Solver++-20 cells"
    )
    parser.add_argument("--out", default=str(RESULTS_DIR))
    parser.add_argument("--resume", action="store_true", help="keep the cells already in OUT/solvers.json")
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
        command=" ".join(["python benchmarks/bench_solvers.py", *map(shlex.quote, argv or sys.argv[1:])]),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
