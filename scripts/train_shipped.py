"""Regenerate every shipped file: the digits classifier, the shipped digits models and their cards.

    python scripts/train_shipped.py                 # everything (classifier, 11 recipes x 3 seeds, leaderboard)
    python scripts/train_shipped.py --seeds 0 --recipes dit_t dit_t_dtr

Every recipe gets the SAME compute (steps x batch, see TRAIN_FLAGS). Runs go to runs/shipped/<recipe>/seed<S>
(checkpoints every quarter of training, for the FID-against-step curves); seed 0's EMA weights are
copied into zoo/pretrained/<recipe>.digits/ and listed with their sha256 in zoo/pretrained/shipped.json,
which zoo/pretrained_shipped.py registers as `<recipe>.digits`. Finally the leaderboard evaluates the
shipped models and every checkpoint of every seed under one protocol and writes the measured
results into the cards.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "zoo" / "pretrained"
RUNS = Path("runs") / "shipped"
RECIPES = [
    "dit_t",
    "dit_t_dtr",
    "dit_t_rand",
    "dit_t_uw_k5",
    "dit_t_nash_k5",
    "dit_t_pcgrad_k5",
    "dit_t_famo_k5",
    "dit_t_dtr_uw_k5",
    "dit_t_dtr_nash_k5",
    "dit_t_dtr_famo_k5",
    "dit_t_minsnr",
]
STEPS = 2000
BATCH = 64
LR = 2e-3
EMA = 0.995
#: identical for every recipe: the compute budget of the comparison
TRAIN_FLAGS = [
    "--data",
    "digits",
    "--steps",
    str(STEPS),
    "--batch",
    str(BATCH),
    "--lr",
    str(LR),
    "--ema",
    str(EMA),
    "--ckpt-every",
    str(STEPS // 4),
    "--keep-last",
    "8",
    "--sample-n",
    "20",
    "--sample-steps",
    "25",
    "--sample-sampler",
    "ddim",
    "--log-every",
    "50",
    "--no-progress",
]


def train_command(recipe: str, seed: int) -> list[str]:
    return [
        "zoo",
        "train",
        recipe,
        *TRAIN_FLAGS,
        "--seed",
        str(seed),
        "--out",
        str(RUNS / recipe / f"seed{seed}"),
    ]


def run(command: list[str], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    # `zoo ...` and `python ...` run with this interpreter, so the script works from any venv
    executable = (
        [sys.executable, *command[1:]] if command[0] == "python" else [sys.executable, "-m", *command]
    )
    print("$", shlex.join(command), flush=True)
    subprocess.run(executable, cwd=ROOT, env=env, check=True)


def train(recipe: str, seed: int, threads: int) -> None:
    final = ROOT / RUNS / recipe / f"seed{seed}" / "final"
    if final.is_dir():
        print(f"{recipe} seed {seed}: done already ({final})", flush=True)
        return
    run(train_command(recipe, seed), threads)


def ship(recipe: str) -> dict:
    """Copy seed 0's EMA model into the package and return its manifest entry."""
    sys.path.insert(0, str(ROOT))
    from zoo.hub import sha256_of

    source = ROOT / RUNS / recipe / "seed0" / "final"
    target = PRETRAINED / f"{recipe}.digits"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "README.md"):
        shutil.copyfile(source / name, target / name)
    # shipped in float16 (half the size; loading casts back to the model's float32)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(source / "model.safetensors"))
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    save_file(half, str(target / "model.safetensors"), metadata={"format": "pt", "dtype": "float16"})
    return {
        "arch": recipe,
        "tag": "digits",
        "file": target.name,
        "sha256": sha256_of(target / "model.safetensors"),
        "command": shlex.join(train_command(recipe, 0)),
        "recipe": {
            "data": "digits train split",
            "steps": STEPS,
            "batch": BATCH,
            "lr": LR,
            "ema": EMA,
            "seed": 0,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipes", nargs="+", default=RECIPES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one torch thread each)")
    parser.add_argument("--skip-classifier", action="store_true")
    parser.add_argument("--skip-leaderboard", action="store_true")
    args = parser.parse_args(argv)
    if not args.skip_classifier:
        run(
            [
                "python",
                "-m",
                "zoo.classifier",
                "--out",
                str(PRETRAINED.relative_to(ROOT) / "digits_classifier"),
            ],
            2,
        )
    jobs = [(recipe, seed) for seed in args.seeds for recipe in args.recipes]  # seed 0 of every recipe first
    with ThreadPoolExecutor(args.jobs) as pool:
        for future in [pool.submit(train, recipe, seed, 1) for recipe, seed in jobs]:
            future.result()
    if 0 in args.seeds:
        manifest_path = PRETRAINED / "shipped.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        for recipe in args.recipes:
            manifest[recipe] = ship(recipe)
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    if not args.skip_leaderboard:
        run(["zoo", "leaderboard", "--data", "digits", "--runs", str(RUNS), "--write-cards"], 2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
