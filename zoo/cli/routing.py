"""`zoo routing`: print the statistics of a routing mask table (DTR's or a random one) and draw it."""

from __future__ import annotations

import argparse
import json

from zoo import routing

HELP = "print and draw a routing mask table"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", default="dtr", choices=["dtr", "random"])
    parser.add_argument("--channels", type=int, default=1024)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--beta", type=float, default=0.8)
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="PNG heatmap path")


def run(args: argparse.Namespace) -> int:
    table = (
        routing.dtr_table(args.channels, num_tasks=args.tasks, beta=args.beta, alpha=args.alpha)
        if args.kind == "dtr"
        else routing.random_table(args.channels, num_tasks=args.tasks, beta=args.beta, seed=args.seed)
    )
    stats = routing.describe_table(table)
    print(json.dumps({k: v for k, v in stats.items() if not isinstance(v, list)}, indent=2, default=str))
    if args.out:
        routing.plot_table(table, args.out)
        print(f"wrote {args.out}")
    return 0
