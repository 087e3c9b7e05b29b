"""Classifier-free guidance scale against the leaderboard's metrics of one shipped model.

    python scripts/guidance_scan.py                     # dit_t.digits at guidance 1.0, 1.5, 2.0
    python scripts/guidance_scan.py --model sit_t --scales 1.0 1.5 --out guidance_sit_t.json

Each scale is one `zoo leaderboard --models MODEL --cfg SCALE` evaluation under the leaderboard's default
protocol (zoo.eval.leaderboard.LeaderboardSettings: solver, steps, samples, seed, features); every row
keeps that protocol record, guidance included. Writes benchmarks/results/guidance_<model>_<data>.json
by default. Guidance > 1 doubles the batch of every net call (the conditional and unconditional halves).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from zoo.eval import leaderboard, record

ROOT = Path(__file__).resolve().parents[1]


def scan(model: str, scales: list[float], data: str = "digits", **overrides) -> dict:
    """One leaderboard row per guidance scale, each with its protocol record; `overrides` are other
    LeaderboardSettings fields (the tests' few samples and steps). The classifier and the reference
    features are loaded once and shared by every scale's evaluator; no grid is written."""
    names = leaderboard.shipped_names(data, model)
    if len(names) != 1:
        raise FileNotFoundError(f"--model {model!r}: expected one shipped {data} model, found {names}")
    rows, first = [], None
    for scale in scales:
        settings = leaderboard.LeaderboardSettings(data=data, models=model, cfg=scale, **overrides)
        evaluator = leaderboard.Evaluator(settings, like=first)
        first = first or evaluator
        (row,) = [record.feature_named(r) for r in leaderboard.evaluate_shipped(evaluator, names, None)]
        command = f"zoo leaderboard --data {data} --models {model} --cfg {scale}"
        rows.append({"guidance": scale, "command": command, **row})
    protocol = rows[0]["protocol"]
    return {
        "what": f"classifier-free guidance scale vs the leaderboard metrics of {rows[0]['model']} "
        f"({protocol['num_samples']} samples, {protocol['solver']} {protocol['steps']} steps, "
        f"{protocol['extractor']} features, seed {protocol['seed']})",
        "command": shlex.join(["python", "scripts/guidance_scan.py", *sys.argv[1:]]),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="dit_t", help="a recipe with shipped weights for --data")
    parser.add_argument("--data", default="digits", choices=leaderboard.SUPPORTED_DATA)
    parser.add_argument("--scales", nargs="+", type=float, default=[1.0, 1.5, 2.0])
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    args = parser.parse_args(argv)
    if any(scale < 1.0 for scale in args.scales):
        parser.error("--scales: guidance scales are >= 1.0 (1.0 is no guidance)")
    out = args.out or ROOT / "benchmarks" / "results" / f"guidance_{args.model}_{args.data}.json"
    record = scan(args.model, args.scales, args.data)
    out.write_text(json.dumps(record, indent=1) + "\n")
    for row in record["rows"]:
        print(
            f"guidance {row['guidance']}: FID {row['fid_classifier']:.2f}, class accuracy "
            f"{row['class_accuracy']:.3f}, recall {row['recall_classifier']:.3f}"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
