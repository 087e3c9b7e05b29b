"""The `zoo` command line (also `python -m zoo`): list, info, convert, push, train, sample, encode,
affinity, routing, leaderboard, fid, demo.

One module per command (`COMMANDS`), each with `HELP` (its one line in `zoo --help`),
`add_arguments(parser)` and `run(args) -> int`. The table and the help lines are static, so `zoo --help`
imports no command module (and no torch); `build_parser(argv)` loads only the command `argv` names.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import sys
from types import ModuleType

#: command -> the module that defines its HELP, add_arguments(parser) and run(args)
COMMANDS = {
    "list": "zoo.cli.list_",
    "info": "zoo.cli.info",
    "convert": "zoo.cli.convert",
    "push": "zoo.cli.push",
    "routing": "zoo.cli.routing",
    "affinity": "zoo.cli.affinity",
    "demo": "zoo.cli.demo",
    "train": "zoo.cli.train",
    "sample": "zoo.cli.sample",
    "encode": "zoo.cli.encode",
    "leaderboard": "zoo.cli.leaderboard",
    "fid": "zoo.cli.fid",
}

#: command -> its line in `zoo --help` (each module's HELP; tests/test_cli_lazy.py keeps them equal)
HELP = {
    "list": "list model names (composable space, or --pretrained weights)",
    "info": "parts, parameters, GFLOPs, clusters and weights of a name",
    "convert": "convert foreign weights (original DiT .pt, diffusers, ANT/DTR) to the zoo layout",
    "push": "upload a zoo weights folder to the Hugging Face Hub",
    "routing": "print and draw a routing mask table",
    "affinity": "measure the task-affinity matrix of a model; save it and a heatmap",
    "demo": "the README's main job on the built-in digits",
    "train": "train or finetune a model (resumable, DDP)",
    "sample": "sample a grid / NPZ from a model",
    "encode": "precompute VAE latents of an image folder",
    "leaderboard": "evaluate shipped models",
    "fid": "FID/KID/precision/recall (IS) between two image sets",
}


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


def command_module(name: str) -> ModuleType:
    """The module of command `name` (imported on first use)."""
    return importlib.import_module(COMMANDS[name])


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `zoo` parser. With `argv`, only the command it names (`argv[0]`) gets its arguments and its
    module imported; the others list their help line. Without `argv`, every command is complete."""
    parser = argparse.ArgumentParser(
        prog="zoo",
        description="Diffusion transformers trained as multi-task learners.",
        formatter_class=DefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        p = sub.add_parser(name, help=HELP[name], formatter_class=DefaultsHelpFormatter)
        if argv is None or argv[:1] == [name]:
            module = command_module(name)
            module.add_arguments(p)
            p.set_defaults(func=module.run)
        else:
            p.set_defaults(func=None)
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
        if os.environ.get("ZOO_DEBUG"):
            raise
        print(f"zoo {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
