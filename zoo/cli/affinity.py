"""`zoo affinity NAME`: measure a model's task-affinity matrix (ANT's Figure 1), save it and a heatmap."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import torch

import zoo
from zoo.clustering.affinity import measure, plot_affinity
from zoo.data import load_dataset

HELP = "measure the task-affinity matrix of a model; save it and a heatmap"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="model name, local-dir:PATH or hf-hub:org/name")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--group", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="affinity")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    if args.batches < 1 or args.batch < 1:
        raise ValueError(f"--batches and --batch must be >= 1, got {args.batches} and {args.batch}")
    model = zoo.create(args.name, pretrained=args.pretrained) if args.pretrained else zoo.create(args.name)
    data = load_dataset(args.data, split="train")
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(data), generator=generator)
    batches = []
    for b in range(args.batches):
        idx = order[b * args.batch : (b + 1) * args.batch]
        items = [data[int(i)] for i in idx]
        batches.append((torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])))
    # the same seeded generator draws the noise and the timesteps: the same command gives the same matrix
    matrix = measure(
        model.net,
        model.diffusion,
        batches,
        group=args.group,
        progress=not getattr(args, "no_progress", False),
        generator=generator,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(matrix, out / "affinity.pt")
    (out / "affinity.json").write_text(
        json.dumps(
            {
                "model": args.name,
                "pretrained": args.pretrained,
                "data": args.data,
                "batches": args.batches,
                "batch": args.batch,
                "group": args.group,
                "seed": args.seed,
                "command": shlex.join(
                    ["zoo", "affinity", args.name]
                    + (["--pretrained", args.pretrained] if args.pretrained else [])
                    + ["--data", args.data, "--batches", str(args.batches), "--batch", str(args.batch)]
                    + ["--group", str(args.group), "--seed", str(args.seed), "--out", str(args.out)]
                ),
                "matrix": matrix.tolist(),
            },
            indent=1,
        )
        + "\n"
    )
    plot_affinity(matrix, out / "affinity.png")
    print(f"wrote {out / 'affinity.pt'}, {out / 'affinity.json'} and {out / 'affinity.png'}")
    return 0
