"""Finetuning plain pretrained weights into a routed / MTL recipe: the warm start against the alternatives.

    python scripts/finetune_study.py --data digits      # trains and evaluates; writes finetune_digits.json
    python scripts/finetune_study.py --data mnist --seeds 0   # seed groups may run side by side
    python scripts/finetune_study.py --data mnist --seeds 1 2
    python scripts/finetune_study.py --report           # merges into finetune.json, stats and the plot

Arms, each for the same optimiser steps and seeds (the shipped recipe's lr, batch and EMA):

* ``warm``: `zoo train ROUTED --pretrained BASE` with the default warm start (masks annealed from all
  ones to the recipe's over half the run, balancer at linear weighting);
* ``scratch``: `zoo train ROUTED` from random weights;
* ``plain``: `zoo train PLAIN --pretrained BASE`, the plain model continued;
Step 0 also evaluates ``naive``: the recipe's masks on the base weights from step 0 (what
`zoo.create(ROUTED, pretrained=BASE)` gave before the warm start; `--routing-warmup 0` trains it).

Every checkpoint's EMA weights are evaluated under the leaderboard's protocol (zoo/eval/leaderboard.py:
500 class-balanced samples, 25 DDIM steps, guidance 1, the shipped classifier's features against the
test split). Step 0 of ``warm`` and ``plain`` is the base model (the warm start's function equals it
exactly, which is checked here on a batch and in tests/test_finetune.py); it is evaluated once.
Torch runs on one thread (OMP_NUM_THREADS=1); every command is recorded in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

import zoo
from zoo.cli import build_parser
from zoo.eval.leaderboard import Evaluator, LeaderboardSettings
from zoo.model import DiffusionModel
from zoo.train import Trainer, config_from_args

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = Path("runs") / "finetune_study"
SEEDS = (0, 1, 2)
LR, BATCH, EMA = "2e-3", "64", "0.995"  # scripts/train_shipped.py's recipe
STUDY = {
    "digits": {
        "base": "dit_t.digits",
        "plain": "dit_t",
        "routed": "dit_t_dtr_nash_k5",
        "steps": 120,
        "every": 60,
        "arms": ("warm", "scratch", "plain"),
    },
    "mnist": {
        "base": "dit_t_p4.mnist",
        "plain": "dit_t_p4",
        "routed": "dit_t_p4_dtr_uw_k5",
        "steps": 400,  # ~0.55 s a step and ~45 s an evaluation on one thread: the study in ~1 h
        "every": 100,
        "arms": ("warm", "scratch", "plain"),
    },
}


def train_command(data: str, arm: str, seed: int) -> list[str]:
    spec = STUDY[data]
    model = spec["plain"] if arm == "plain" else spec["routed"]
    command = [sys.executable, "-m", "zoo", "train", model, "--data", data, "--steps", str(spec["steps"])]
    command += ["--batch", BATCH, "--lr", LR, "--ema", EMA, "--seed", str(seed)]
    command += ["--out", str(RUNS / data / arm / f"seed{seed}"), "--ckpt-every", str(spec["every"])]
    command += ["--keep-last", "100", "--sample-n", "10", "--sample-steps", "25", "--sample-sampler", "ddim"]
    command += ["--log-every", "50", "--no-progress"]
    if arm != "scratch":
        command += ["--pretrained", spec["base"]]
    if arm == "naive":
        command += ["--routing-warmup", "0"]
    return command


def train_in_process(arguments: list[str]) -> None:
    """`zoo train ARGUMENTS` in this process (the CLI's own parser and Trainer; saves the start-up)."""

    summary = Trainer(config_from_args(build_parser(arguments).parse_args(arguments))).fit()
    if summary["stopped_by"]:
        raise RuntimeError(f"zoo train {shlex.join(arguments)} stopped by {summary['stopped_by']}")


def evaluate_checkpoint(evaluator, path: Path, name: str) -> dict:

    state = torch.load(path, map_location="cpu", weights_only=True)
    model = DiffusionModel(json.loads(state["model_config"]))
    model.net.load_state_dict(state["ema"])
    row = evaluator.evaluate(model.eval(), name, "checkpoint", training_step=int(state["step"]))
    strength = (model.config.get("routing") or {}).get(
        "strength", 1.0 if model.config.get("routing") else None
    )
    return {
        "step": int(state["step"]),
        "fid": row["fid"],
        "class_accuracy": row["class_accuracy"],
        "strength": strength,
    }


def step_zero(evaluator, spec: dict) -> dict:
    """FID of the base, of the warm-started routed model and of the naive one, before any step."""
    import warnings

    base = zoo.create(spec["base"], pretrained=True).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warm = zoo.create(spec["routed"], pretrained=spec["base"]).eval()
        naive = zoo.create(spec["routed"], pretrained=spec["base"]).eval()
    warm.set_routing_strength(0.0)  # what the trainer's warm start does at step 0
    generator = torch.Generator().manual_seed(0)
    shape = (16, *base.sample_shape)
    x, t = torch.randn(shape, generator=generator), torch.randint(0, 1000, (16,), generator=generator)
    y = torch.arange(16) % base.num_classes
    with torch.no_grad():
        max_difference = float((warm.net(x, t, y) - base.net(x, t, y)).abs().max())
    out = {"max_abs_output_difference_warm_vs_base": max_difference}
    for name, model in (("base", base), ("warm", warm), ("naive", naive)):
        out[f"fid_{name}"] = evaluator.evaluate(model, name, "step0")["fid"]
        print(f"step 0 {name}: FID {out[f'fid_{name}']:.3f}", flush=True)
    return out


def code_version() -> str:
    """The git commit the study runs (with "+dirty" when tracked files differ from it)."""
    import subprocess

    def git(*arguments: str) -> str:
        return subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def result_path(data: str, seeds: tuple[int, ...]) -> Path:
    return RESULTS / f"finetune_{data}_seeds{''.join(map(str, seeds))}.json"


def run_data(data: str, seeds: tuple[int, ...] = SEEDS) -> Path:

    torch.set_num_threads(1)
    os.chdir(ROOT)  # the recorded commands use paths relative to the repository
    spec = STUDY[data]
    settings = LeaderboardSettings(data=data)
    evaluator = Evaluator(settings)
    started = time.perf_counter()
    result: dict = {"data": data, **{k: v for k, v in spec.items() if k != "arms"}, "arms": {}}
    ddpm = settings.choice("ddpm")  # the study's models are DDPM ones: their solver and steps
    result["protocol"] = {
        "samples": settings.samples,
        "steps": ddpm.steps,
        "sampler": ddpm.solver,
        "cfg": settings.cfg,
        "seed": settings.seed,
    }
    previous_path = result_path(data, seeds)
    previous = json.loads(previous_path.read_text()) if previous_path.is_file() else {}
    if previous.get("steps") != spec["steps"] or previous.get("protocol") != result["protocol"]:
        previous = {}  # an earlier study of other settings: nothing to reuse
    result["seeds"] = list(seeds)
    result["code_version"] = code_version()
    result["step0"] = previous.get("step0") or (step_zero(evaluator, spec) if 0 in seeds else None)
    result["commands"] = []
    result["arms"] = {arm: {} for arm in spec["arms"]}
    for seed in seeds:  # seed-major: an interrupted study still has every arm for its first seeds
        for arm in spec["arms"]:
            command = train_command(data, arm, seed)
            result["commands"].append(shlex.join(["OMP_NUM_THREADS=1", "python", *command[1:]]))
            run_dir = RUNS / data / arm / f"seed{seed}"
            if not (run_dir / "final").is_dir():
                tic = time.perf_counter()
                train_in_process(command[3:])
                print(f"{data} {arm} seed {seed}: trained in {time.perf_counter() - tic:.0f} s", flush=True)
            done = previous.get("arms", {}).get(arm, {}).get(str(seed))
            if done and (run_dir / "final").is_dir():  # evaluated by an interrupted earlier run of the study
                result["arms"][arm][str(seed)] = done
                continue
            curve = []
            for path in sorted((ROOT / run_dir / "checkpoints").glob("step-*.pt")):
                curve.append(evaluate_checkpoint(evaluator, path, f"{arm}@seed{seed}"))
                print(
                    f"{data} {arm} seed {seed} step {curve[-1]['step']}: FID {curve[-1]['fid']:.3f}",
                    flush=True,
                )
            result["arms"][arm][str(seed)] = sorted(curve, key=lambda row: row["step"])
            write(result, result_path(data, seeds))
    result["wall_time_s"] = round(time.perf_counter() - started, 1)
    return write(result, result_path(data, seeds))


def merged(data: str) -> dict:
    """The results of every seed group of a data set, in one result (step 0 from the group with seed 0)."""
    parts = [json.loads(path.read_text()) for path in sorted(RESULTS.glob(f"finetune_{data}_seeds*.json"))]
    if not parts:
        raise FileNotFoundError(f"no {RESULTS}/finetune_{data}_seeds*.json: run --data {data} first")
    result = {**parts[0], "arms": {}, "commands": [], "seed_groups": []}
    for part in parts:
        result["step0"] = result.get("step0") or part.get("step0")
        result["commands"] += part["commands"]
        group = {"seeds": part["seeds"], "wall_time_s": part.get("wall_time_s")}
        result["seed_groups"].append({**group, "code_version": part.get("code_version")})
        for arm, curves in part["arms"].items():
            result["arms"].setdefault(arm, {}).update(curves)
    for key in ("seeds", "wall_time_s", "code_version"):
        result.pop(key, None)
    return result


def write(payload: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def curve_stats(result: dict, arm: str) -> list[dict]:
    """Mean and sample std over seeds at every evaluated step (step 0 from the step-0 evaluation)."""
    by_step: dict[int, list[float]] = {}
    for curve in result["arms"][arm].values():
        for row in curve:
            by_step.setdefault(row["step"], []).append(row["fid"])
    rows = []
    zero = {"warm": "fid_warm", "plain": "fid_base", "naive": "fid_naive"}.get(arm)
    if zero:
        rows.append({"step": 0, "mean": result["step0"][zero], "std": 0.0, "n": 1})
    for step, values in sorted(by_step.items()):
        rows.append(
            {
                "step": step,
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else float("nan"),
                "n": len(values),
            }
        )
    return rows


def tests_at_last_step(result: dict) -> list[dict]:
    """Welch and paired (same seed) t-tests of the warm start against every other arm at the last step."""
    from scipy import stats

    last = result["steps"]

    def finals(arm: str) -> dict[str, float]:
        curves = result["arms"][arm].items()
        return {seed: next(r["fid"] for r in curve if r["step"] == last) for seed, curve in curves}

    out = []
    for arm in result["arms"]:
        if arm == "warm":
            continue
        seeds = sorted(set(finals("warm")) & set(finals(arm)))
        if len(seeds) < 2:
            continue
        warm = [finals("warm")[s] for s in seeds]
        other = [finals(arm)[s] for s in seeds]
        out.append(
            {
                "warm_vs": arm,
                "step": last,
                "seeds": seeds,
                "warm_mean": statistics.fmean(warm),
                "other_mean": statistics.fmean(other),
                "welch_p": float(stats.ttest_ind(warm, other, equal_var=False).pvalue),
                "paired_p": float(stats.ttest_rel(warm, other).pvalue),
            }
        )
    return out


def report() -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    payload = {"script": "scripts/finetune_study.py", "data": {}}
    figure, axes = plt.subplots(1, len(STUDY), figsize=(6 * len(STUDY), 5.0), dpi=110, squeeze=False)
    colours = {"warm": "tab:green", "scratch": "tab:red", "plain": "tab:blue", "naive": "tab:orange"}
    labels = {
        "warm": "(a) warm start (routed), mean ± 1 std over seeds",
        "scratch": "(b) routed from scratch, mean ± 1 std",
        "plain": "(c) plain continued, mean ± 1 std",
        "naive": "masks from step 0 (no warm start)",
    }
    for ax, data in zip(axes[0], STUDY):
        result = merged(data)
        entry = {
            "result": result,
            "curves": {arm: curve_stats(result, arm) for arm in result["arms"]},
            "tests": tests_at_last_step(result),
        }
        payload["data"][data] = entry
        for arm, rows in entry["curves"].items():
            steps = [r["step"] for r in rows]
            mean = [r["mean"] for r in rows]
            std = [r["std"] for r in rows]
            ax.plot(steps, mean, marker="o", color=colours[arm], label=labels[arm])
            ax.fill_between(
                steps,
                [m - s for m, s in zip(mean, std)],
                [m + s for m, s in zip(mean, std)],
                color=colours[arm],
                alpha=0.2,
            )
        ax.scatter(
            [0],
            [result["step0"]["fid_naive"]],
            marker="x",
            s=60,
            color="black",
            zorder=5,
            label="recipe's masks on the base weights (step 0, no warm start)",
        )
        ax.axhline(result["step0"]["fid_base"], color="grey", linestyle="--", label="base weights (step 0)")
        ax.axvline(result["steps"] // 2, color="grey", linestyle=":", label="warm-up ends (N = steps / 2)")
        ax.set_yscale("log")
        ax.set_xlabel("finetuning step")
        ax.set_ylabel("FID (shipped classifier features; log scale)")
        counts = ", ".join(f"{arm} {len(curves)}" for arm, curves in result["arms"].items())
        ax.set_title(
            f"{data}: {result['routed']} from {result['base']}\nseeds per arm: {counts}", fontsize=10
        )
    handles, names = axes[0][0].get_legend_handles_labels()  # the same entries in every panel
    figure.legend(handles, names, loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    plot = RESULTS / "finetune_fid_vs_step.png"
    figure.savefig(plot)
    payload["plot"] = f"benchmarks/results/{plot.name}"
    print(markdown(payload))
    return write(payload, RESULTS / "finetune.json")


def markdown(payload: dict) -> str:
    """The tables of benchmarks/REPLICATION.md: FID mean ± std (n seeds) per arm and step, and the t-tests."""
    lines = []
    for data, entry in payload["data"].items():
        result = entry["result"]
        steps = sorted({row["step"] for rows in entry["curves"].values() for row in rows})
        lines += [f"{data}: {result['routed']} from {result['base']}, step-0 {result['step0']}", ""]
        lines += ["| arm | " + " | ".join(f"step {s}" for s in steps) + " |"]
        lines += ["|---|" + "---|" * len(steps)]
        for arm, rows in entry["curves"].items():
            cells = {row["step"]: f"{row['mean']:.1f} ± {row['std']:.1f} ({row['n']})" for row in rows}
            lines += [f"| {arm} | " + " | ".join(cells.get(s, "") for s in steps) + " |"]
        for test in entry["tests"]:
            lines += [
                f"- warm vs {test['warm_vs']} at step {test['step']} (seeds {test['seeds']}): "
                f"{test['warm_mean']:.2f} vs {test['other_mean']:.2f}, Welch p = {test['welch_p']:.3g}, "
                f"paired p = {test['paired_p']:.3g}"
            ]
        lines += [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", choices=sorted(STUDY), help="train and evaluate one data set")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="seeds of this group")
    parser.add_argument("--report", action="store_true", help="merge the data sets' results, test and plot")
    args = parser.parse_args(argv)
    if not args.data and not args.report:
        parser.error("give --data NAME and/or --report")
    if args.data:
        print(f"wrote {run_data(args.data, tuple(args.seeds))}")
    if args.report:
        print(f"wrote {report()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
