"""`zoo demo` (`make demo`): load the shipped digits models, sample a grid from each, evaluate them under
one protocol and print the leaderboard table, in a few minutes on a CPU.

Few samples and DDIM steps keep it fast; the full leaderboard is `zoo leaderboard` (a benchmark).
Without shipped models (a fresh checkout before scripts/train_shipped.py) it trains `dit_t` on the
digits for a few hundred steps instead and writes its sample grid.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.eval.leaderboard import LeaderboardSettings, render_markdown, run_leaderboard, shipped_names
from zoo.train import TrainConfig, Trainer

DEMO_SAMPLES = 100
QUICK_SAMPLES = 30
DEMO_STEPS = 10
QUICK_STEPS = 4
FALLBACK_TRAIN_STEPS = 300

HELP = "the README's main job on the built-in digits"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--quick", action="store_true")


def run(args: argparse.Namespace) -> int:
    return run_demo(out=Path(args.out), steps=args.steps, quick=args.quick)


def run_demo(out: Path, steps: int | None = None, quick: bool = False) -> int:
    """Evaluate every shipped digits model (grids, JSON/MD table, PNGs in `out`); `steps` = DDIM steps."""

    out = Path(out)
    names = shipped_names("digits", "*")
    if not names:
        return _train_fallback(out, steps, quick)
    if quick:
        names = names[:2]
    settings = LeaderboardSettings(
        samples=QUICK_SAMPLES if quick else DEMO_SAMPLES,
        steps=steps or (QUICK_STEPS if quick else DEMO_STEPS),
        kid_subsets=20,
    )
    print(
        f"evaluating {len(names)} shipped models: {settings.samples} samples each, {settings.steps} steps of "
        "DDIM (DDPM process) or Heun (flow process) (a quick look; `zoo leaderboard` is the full protocol)",
        flush=True,
    )
    payload = run_leaderboard(settings, out=out, names=names, tag="demo")
    print()
    print(render_markdown(payload))
    print(f"sample grids and leaderboard_demo.{{json,md}} written to {out}/")
    return 0


def _train_fallback(out: Path, steps: int | None, quick: bool) -> int:
    """No shipped models yet: train dit_t on the digits briefly, with a progress bar, and write its grid."""

    train_steps = steps or (30 if quick else FALLBACK_TRAIN_STEPS)
    print(f"no shipped models found: training dit_t on digits for {train_steps} steps instead", flush=True)
    config = TrainConfig(
        model="dit_t",
        data="digits",
        steps=train_steps,
        batch=32,
        lr=1e-3,
        ema=0.99,
        out=str(out / "dit_t_run"),
        ckpt_every=0,
        sample_n=20,
        sample_steps=10,
        sample_sampler="ddim",
    )
    summary = Trainer(config).fit()
    grid = Path(summary["final_dir"]) / "samples.png"
    print(f"final loss {summary['final_loss']:.4f}; sample grid: {grid}")
    return 0
