"""The README's training command, run verbatim, evaluated under the leaderboard's protocol.

    OMP_NUM_THREADS=1 python scripts/readme_train_run.py            # train (~3 CPU-minutes) and evaluate
    python scripts/readme_train_run.py --skip-train --wall-time 171  # evaluate an existing runs/digits

Writes benchmarks/results/readme_train_run.json (command, rc, wall time, the card's recipe, FID, KID,
precision, recall, class accuracy under the digits leaderboard protocol) and
benchmarks/results/readme_train_run.png (the leaderboard's grid of the final EMA model: 10 per class).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import zoo
from zoo.eval.leaderboard import Evaluator, LeaderboardSettings
from zoo.train.checkpoint import sha256_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COMMAND = "zoo train dit_t_dtr_uw_k5 --data digits --steps 2000 --out runs/digits"
RESULTS = ROOT / "benchmarks" / "results"
FID_TARGET = 15.0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--skip-train", action="store_true", help="evaluate the run already in runs/digits")
    parser.add_argument("--wall-time", type=float, default=None, help="wall time of a run made elsewhere")
    args = parser.parse_args()
    run = ROOT / "runs" / "digits"
    rc, wall = 0, args.wall_time
    if not args.skip_train:
        if run.exists():
            raise SystemExit(f"{run} exists: remove it first (the README's command starts a fresh run)")
        argv = [sys.executable, "-m", "zoo", *shlex.split(COMMAND)[1:]]
        start = time.perf_counter()
        rc = subprocess.run(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode
        wall = time.perf_counter() - start
        if rc != 0:
            raise SystemExit(f"the README's command failed (rc {rc})")

    import torch

    torch.set_num_threads(1)
    final = run / "final"
    model = zoo.create(f"local-dir:{final}").eval()
    settings = LeaderboardSettings(data="digits")
    grid = RESULTS / "readme_train_run.png"
    row = Evaluator(settings).evaluate(
        model, "readme:runs/digits/final", sha256_file(final / "model.safetensors"), grid=grid
    )
    card = (final / "README.md").read_text()
    recipe = json.loads(card.split("## Training\n\n```\n", 1)[1].split("```", 1)[0])
    payload = {
        "command": COMMAND,
        "rc": rc,
        "wall_time_s": None if wall is None else round(wall, 1),
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or None,
        "recipe": recipe,
        "metrics": {k: row[k] for k in ("fid", "kid", "precision", "recall", "class_accuracy") if k in row},
        "fid_target": FID_TARGET,
        "passes": row["fid"] <= FID_TARGET,
        "protocol": row["protocol"],
        "sample_grid": grid.name,
        "evaluated_with": "python scripts/readme_train_run.py" + (" --skip-train" if args.skip_train else ""),
    }
    (RESULTS / "readme_train_run.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload["metrics"], indent=2))
    print(
        f"FID {row['fid']:.2f} (target <= {FID_TARGET}); wrote {RESULTS / 'readme_train_run.json'} and {grid}"
    )
    return 0 if payload["passes"] else 1


if __name__ == "__main__":
    sys.exit(main())
