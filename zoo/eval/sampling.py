"""`zoo sample`: draw images from a zoo model in batches and write a grid, one PNG each, and/or an NPZ.

Everything goes through `model.sample(labels, steps=..., sampler=..., guidance=..., generator=...)`;
latent models decode with the VAE named in their config. One generator seeded with `--seed` drives
all batches, so the same command writes the same images.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch

import zoo
from zoo.data.images import ensure_writable, save_grid, save_images, save_npz
from zoo.hub import is_location
from zoo.validate import finite_float, int_at_least


def parse_labels(spec: str, n: int, num_classes: int, generator: torch.Generator) -> torch.Tensor | None:
    """`0,1,2` (cycled to n), `random` (uniform over the classes) or `none` (unconditional) -> labels (n,)."""
    if spec == "none":
        return None
    if num_classes <= 0:
        raise ValueError(f"this model is unconditional; expected --labels none, got {spec!r}")
    if spec == "random":
        return torch.randint(num_classes, (n,), generator=generator)
    try:
        values = [int(item) for item in spec.split(",") if item.strip()]
    except ValueError as error:
        raise ValueError(
            f"--labels expects comma-separated integers, 'random' or 'none'; got {spec!r}"
        ) from error
    if not values:
        raise ValueError("--labels is empty; expected e.g. 0,1,2")
    bad = [value for value in values if not 0 <= value < num_classes]
    if bad:
        raise ValueError(f"labels {bad} out of range; expected 0..{num_classes - 1}")
    return torch.tensor(values).repeat(math.ceil(n / len(values)))[:n]


def sample_images(
    model: torch.nn.Module,
    n: int,
    labels: torch.Tensor | None,
    batch: int = 64,
    progress: bool = True,
    generator: torch.Generator | None = None,
    **sample_kwargs: Any,
) -> torch.Tensor:
    """`n` images from `model.sample` in batches of `batch`, on the model's device, returned on CPU."""
    from tqdm.auto import tqdm

    if n < 1 or batch < 1:
        raise ValueError(f"need n >= 1 and batch >= 1, got n={n}, batch={batch}")
    chunks = []
    for start in tqdm(range(0, n, batch), desc="sample", disable=not progress):
        count = min(batch, n - start)
        part = None if labels is None else labels[start : start + count]
        images = model.sample(part, num_samples=count, generator=generator, **sample_kwargs)
        chunks.append(images.float().clamp(-1, 1).cpu())
    return torch.cat(chunks)


def add_sample_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of `zoo sample NAME[.tag]|local-dir:PATH ...`."""

    parser.add_argument("model", help="NAME[.tag] (pretrained weights), local-dir:PATH or hf-hub:ORG/NAME")
    parser.add_argument("--n", type=int_at_least(1), default=64, help="number of images")
    parser.add_argument("--labels", default="random", help="0,1,2 (cycled) | random | none")
    parser.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm")
    parser.add_argument("--steps", type=int_at_least(1), default=250, help="sampling steps (respaced)")
    parser.add_argument(
        "--cfg",
        type=finite_float(0.0, note="1 = no guidance"),
        default=1.0,
        help="classifier-free guidance scale (1 = none, as model.sample and the leaderboard)",
    )
    parser.add_argument("--eta", type=finite_float(0.0, 1.0), default=0.0, help="DDIM eta, in [0, 1]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int_at_least(1), default=64, help="images per model.sample call")
    parser.add_argument("--out", default="grid.png", help="grid PNG ('' for none)")
    parser.add_argument("--nrow", type=int_at_least(1), default=8, help="images per grid row")
    parser.add_argument("--npz", default=None, help="also write uint8 NHWC arr_0 (ADM evaluator format)")
    parser.add_argument("--outdir", default=None, help="also write one PNG per image here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def load_model(name: str) -> torch.nn.Module:
    """A model with weights: `local-dir:`/`hf-hub:` locations as they are, registry names pretrained."""

    if is_location(name):  # a path only when written as one (./x, /x, local-dir:): never shadows a name
        return zoo.create(name)
    return zoo.create(name, pretrained=True)


def main_from_args(args: argparse.Namespace) -> int:
    """`zoo sample`: load, draw `--n` images and write the requested outputs."""
    if args.sampler == "ddpm" and args.eta != 0.0:  # before loading anything
        raise ValueError(f"--eta is a DDIM parameter; got --eta {args.eta} with --sampler ddpm")

    for path, folder in ((args.out, False), (args.npz, False), (args.outdir, True)):
        if path:  # refused before loading or sampling
            ensure_writable(path, directory=folder)
    model = load_model(args.model).to(args.device).eval()
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    label_generator = torch.Generator().manual_seed(args.seed)
    labels = parse_labels(
        args.labels, args.n, int(getattr(model.net, "num_classes", 0) or 0), label_generator
    )
    images = sample_images(
        model,
        args.n,
        labels,
        batch=args.batch,
        progress=not args.no_progress,
        generator=generator,
        steps=args.steps,
        sampler=args.sampler,
        guidance=args.cfg,
        eta=args.eta,
    )
    written = []
    if args.out:
        upscale = max(1, 64 // images.shape[-1])
        written.append(str(save_grid(images, args.out, nrow=args.nrow, upscale=upscale)))
    if args.npz:
        written.append(str(save_npz(images, args.npz)))
    if args.outdir:
        save_images(images, args.outdir)
        written.append(f"{args.outdir}/ ({len(images)} PNGs)")
    print(
        f"sampled {len(images)} images: {', '.join(written) or 'nothing written (no --out/--npz/--outdir)'}"
    )
    return 0
