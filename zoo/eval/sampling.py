"""`zoo sample`: draw images from a zoo model in batches and write a grid, one PNG each, and/or an NPZ.

Everything goes through `model.sample(labels, steps=..., solver=..., guidance=..., generator=...)`;
latent models decode with the VAE named in their config. One generator seeded with `--seed` drives
all batches, so the same command writes the same images. It prints the NFE per image it cost.
"""

from __future__ import annotations

import argparse
import inspect
import math
from typing import Any

import torch

import zoo
from zoo.data.images import ensure_writable, save_grid, save_images, save_npz
from zoo.diffusion import GRIDS, get_solver, list_processes, solvers_for
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


def all_solvers() -> list[str]:
    """Every registered solver name, over all processes (a model's own are `model.solvers`)."""
    names: list[str] = []
    for process in list_processes():
        names += [name for name in solvers_for(process) if name not in names]
    return names


def _solver_functions(solver: str) -> list[Any]:
    found = [get_solver(p, solver) for p in list_processes() if solver in solvers_for(p)]
    if not found:
        get_solver(list_processes()[0], solver)  # raises, naming the solvers that exist
    return found


def check_solver_options(solver: str, steps: int | None, grid: str | None = None) -> None:
    """Refuse, before any model is loaded, a solver option the solver does not take or too few steps
    (`dpm++2m` needs 3); the upper bound, the model's number of timesteps, is `model.sample`'s check."""
    functions = _solver_functions(solver)
    if grid is not None:
        if grid not in GRIDS:
            raise ValueError(f"unknown grid {grid!r}; expected one of {GRIDS}")
        if not any("grid" in inspect.signature(fn).parameters for fn in functions):
            takers = [
                name
                for name in all_solvers()
                if any("grid" in inspect.signature(fn).parameters for fn in _solver_functions(name))
            ]
            raise ValueError(f"solver {solver!r} takes no time grid; the grid is an option of {takers}")
    least = max(getattr(fn, "min_steps", 1) for fn in functions)
    if steps is not None and steps < least:
        raise ValueError(f"solver {solver!r} needs steps >= {least}, got {steps}")


def sample_images(
    model: torch.nn.Module,
    n: int,
    labels: torch.Tensor | None,
    batch: int = 64,
    progress: bool = True,
    generator: torch.Generator | None = None,
    return_info: bool = False,
    **sample_kwargs: Any,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
    """`n` images from `model.sample` in batches of `batch`, on the model's device, returned on CPU.

    `return_info=True` returns `(images, info)`: the info of `model.sample(return_info=True)` with
    `net_calls` summed over the batches and `nfe` per image over all of them.
    """
    from tqdm.auto import tqdm

    if n < 1 or batch < 1:
        raise ValueError(f"need n >= 1 and batch >= 1, got n={n}, batch={batch}")
    chunks, total = [], None
    for start in tqdm(range(0, n, batch), desc="sample", disable=not progress):
        count = min(batch, n - start)
        part = None if labels is None else labels[start : start + count]
        images, info = model.sample(
            part, num_samples=count, generator=generator, return_info=True, **sample_kwargs
        )
        chunks.append(images.float().clamp(-1, 1).cpu())
        if total is None:
            total = {**info, "net_calls": 0, "nfe": 0}
        total["net_calls"] += info["net_calls"]
        total["nfe"] += info["nfe"] * count
    images = torch.cat(chunks)
    if not return_info:
        return images
    nfe = total["nfe"] / n
    return images, {**total, "nfe": int(nfe) if float(nfe).is_integer() else nfe}


def add_sample_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of `zoo sample NAME[.tag]|local-dir:PATH ...`."""

    parser.add_argument("model", help="NAME[.tag] (pretrained weights), local-dir:PATH or hf-hub:ORG/NAME")
    parser.add_argument("--n", type=int_at_least(1), default=64, help="number of images")
    parser.add_argument("--labels", default="random", help="0,1,2 (cycled) | random | none")
    parser.add_argument(
        "--solver",
        "--sampler",
        dest="solver",
        choices=all_solvers(),
        default="ddpm",
        help="the solver (--sampler is the same flag); it must fit the model's process",
    )
    parser.add_argument(
        "--steps", type=int_at_least(1), default=250, help="solver steps (NFE per image = steps, x2 guided)"
    )
    parser.add_argument("--grid", choices=GRIDS, default=None, help="time grid of dpm++2m (default uniform)")
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
    if args.solver != "ddim" and args.eta != 0.0:  # before loading anything
        raise ValueError(f"--eta is a DDIM parameter; got --eta {args.eta} with --solver {args.solver}")
    check_solver_options(args.solver, args.steps, args.grid)

    for path, folder in ((args.out, False), (args.npz, False), (args.outdir, True)):
        if path:  # refused before loading or sampling
            ensure_writable(path, directory=folder)
    model = load_model(args.model).to(args.device).eval()
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    label_generator = torch.Generator().manual_seed(args.seed)
    labels = parse_labels(
        args.labels, args.n, int(getattr(model.net, "num_classes", 0) or 0), label_generator
    )
    images, info = sample_images(
        model,
        args.n,
        labels,
        batch=args.batch,
        progress=not args.no_progress,
        generator=generator,
        return_info=True,
        steps=args.steps,
        solver=args.solver,
        guidance=args.cfg,
        eta=args.eta,
        **({} if args.grid is None else {"grid": args.grid}),
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
        f"sampled {len(images)} images with {info['solver']} ({info['steps']} steps, NFE {info['nfe']} per image, "
        f"{info['net_calls']} net calls): {', '.join(written) or 'nothing written (no --out/--npz/--outdir)'}"
    )
    return 0
