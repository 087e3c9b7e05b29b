"""The `zoo` command line (also `python -m zoo`): list, info, convert, push, train, sample, encode,
affinity, routing, leaderboard, fid, demo."""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path


def _cmd_list(args: argparse.Namespace) -> int:
    from zoo.hub import list_models

    names = list_models(args.pattern, pretrained=args.pretrained)
    for name in names:
        print(name)
    if not names:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from zoo import describe

    info = describe(args.name)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"{info['name']}")
    for part, value in info["parts"].items():
        print(f"  {part:<10} {value}")
    kwargs = info["backbone_kwargs"]
    size = kwargs.get("input_size", kwargs.get("image_size"))
    print(
        f"  input      {size}x{size}x{kwargs.get('in_channels')}, {kwargs.get('num_classes', 0):,} classes"
        + (f", VAE {info['vae']['repo']}" if info.get("vae") else "")
    )
    print(f"  diffusion  {info['diffusion']}")
    print(
        f"  parameters {info['parameters']:,} (fixed sin-cos pos_embed included; "
        f"{info['trainable_parameters']:,} trainable)"
    )
    if info["gflops"] is not None:
        print(f"  GFLOPs     {info['gflops']:.4g}")
    if info["clusters"] is not None:
        print(f"  intervals  {info['clusters']}")
    if info["routing"]:
        print(f"  routing    {info['routing']}")
    print(f"  mtl        {info['mtl']}")
    for weights in info["weights"]:
        print(
            f"  weights    {weights['name']} ({weights['license']}, {weights['format']}, "
            f"{weights['schedule']} schedule) {weights['results']}"
        )
    if not info["weights"]:
        print("  weights    none registered")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from zoo.cli.convert import convert_to_diffusers, convert_to_zoo

    if args.to == "diffusers":
        vae = None if args.vae == "none" else args.vae
        print(f"wrote {convert_to_diffusers(args.src, args.dst, vae=vae)}")
        return 0

    out = convert_to_zoo(
        args.src,
        args.dst,
        name=args.name,
        fmt=args.format,
        num_classes=args.num_classes,
        timestep_embedding=args.timestep_embedding,
        beta=args.beta,
        alpha=args.alpha,
    )
    print(f"wrote {out}")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from zoo.layout import push_folder

    print(push_folder(args.dir, args.repo, private=args.private))
    return 0


def _cmd_affinity(args: argparse.Namespace) -> int:
    from zoo.cli.affinity import run_affinity

    return run_affinity(args)


def _cmd_routing(args: argparse.Namespace) -> int:
    from zoo import routing

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


def _cmd_demo(args: argparse.Namespace) -> int:
    from zoo.cli.demo import run_demo

    return run_demo(out=Path(args.out), steps=args.steps, quick=args.quick)


def _delegate(module: str, adder: str, runner: str):
    """Subcommands whose parsers and bodies live in their own modules (imported only when used)."""

    def add(parser: argparse.ArgumentParser) -> None:
        import importlib

        getattr(importlib.import_module(module), adder)(parser)

    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), runner)(args) or 0

    return add, run


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` states every option's default, also for options declared without a help text."""

    def _format_action(self, action: argparse.Action) -> str:
        if (
            not action.help
            and action.default is not argparse.SUPPRESS
            and (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))
        ):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoo",
        description="Diffusion transformers trained as multi-task learners.",
        formatter_class=DefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_parser = sub.add_parser

    def add_parser(name: str, **kwargs):  # every subcommand's --help shows its defaults
        return _add_parser(name, formatter_class=DefaultsHelpFormatter, **kwargs)

    sub.add_parser = add_parser

    p = sub.add_parser("list", help="list model names (composable space, or --pretrained weights)")
    p.add_argument("pattern", nargs="?", default="*")
    p.add_argument("--pretrained", action="store_true")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("info", help="parts, parameters, GFLOPs, clusters and weights of a name")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "convert", help="convert foreign weights (original DiT .pt, diffusers, ANT/DTR) to the zoo layout"
    )
    p.add_argument(
        "src", help="a .pt file, a diffusers folder, or hf-hub:org/name (--to diffusers: a zoo model)"
    )
    p.add_argument("dst", help="output folder (config.json, model.safetensors, README.md)")
    p.add_argument(
        "--to",
        default="zoo",
        choices=["zoo", "diffusers"],
        help="zoo: foreign weights into the zoo layout (default); diffusers: an unrouted zoo DiT out to a "
        "DiTPipeline folder (transformer/, scheduler/, vae/)",
    )
    p.add_argument(
        "--vae",
        default="auto",
        help="--to diffusers: the AutoencoderKL folder or repo to bundle (default: the model's own; none: skip)",
    )
    p.add_argument("--name", default=None, help="zoo recipe name (default: inferred backbone)")
    p.add_argument("--format", default="auto", choices=["auto", "dit_original", "diffusers", "ant", "dtr"])
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument(
        "--timestep-embedding",
        default="diffusers",
        choices=["diffusers", "original"],
        help="for diffusers sources: reproduce diffusers' forward (default), or the original DiT's "
        "sinusoid (what facebook/DiT-XL-2-* were trained with)",
    )
    p.add_argument(
        "--beta", type=float, default=0.8, help="DTR beta of a --format dtr checkpoint's stored tables"
    )
    p.add_argument(
        "--alpha", type=float, default=4.0, help="DTR alpha of a --format dtr checkpoint's stored tables"
    )
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("push", help="upload a zoo weights folder to the Hugging Face Hub")
    p.add_argument("dir")
    p.add_argument("repo")
    p.add_argument("--private", action="store_true")
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser("routing", help="print and draw a routing mask table")
    p.add_argument("--kind", default="dtr", choices=["dtr", "random"])
    p.add_argument("--channels", type=int, default=1024)
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--beta", type=float, default=0.8)
    p.add_argument("--alpha", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="PNG heatmap path")
    p.set_defaults(func=_cmd_routing)

    p = sub.add_parser("affinity", help="measure the task-affinity matrix of a model; save it and a heatmap")
    p.add_argument("name", help="model name, local-dir:PATH or hf-hub:org/name")
    p.add_argument("--pretrained", default=None)
    p.add_argument("--data", default="digits")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--group", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="affinity")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_affinity)

    p = sub.add_parser("demo", help="the README's main job on the built-in digits")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    p.set_defaults(func=_cmd_demo)

    for name, module, adder, runner, text in (
        (
            "train",
            "zoo.train",
            "add_train_arguments",
            "main_from_args",
            "train or finetune a model (resumable, DDP)",
        ),
        (
            "sample",
            "zoo.eval.sampling",
            "add_sample_arguments",
            "main_from_args",
            "sample a grid / NPZ from a model",
        ),
        (
            "encode",
            "zoo.data",
            "add_encode_arguments",
            "encode_main",
            "precompute VAE latents of an image folder",
        ),
        (
            "leaderboard",
            "zoo.eval.leaderboard",
            "add_leaderboard_arguments",
            "main_from_args",
            "evaluate shipped models",
        ),
        (
            "fid",
            "zoo.cli.fid",
            "add_fid_arguments",
            "main_from_args",
            "FID/KID/precision/recall (IS) between two image sets",
        ),
    ):
        p = sub.add_parser(name, help=text)
        # only the chosen subcommand's module is imported (train pulls in far more than `zoo list`)
        if argv is not None and argv[:1] == [name]:
            add, run = _delegate(module, adder, runner)
            add(p)
            p.set_defaults(func=run)
        else:
            p.set_defaults(func=None, _lazy=(module, adder, runner))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # user-facing errors: one clear line, not a traceback (ZOO_DEBUG=1 for one)
        import os

        if os.environ.get("ZOO_DEBUG"):
            raise
        print(f"zoo {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
