"""`zoo list [PATTERN]`: the composable model names matching an fnmatch pattern, or `--pretrained` the
`name.tag`s with registered weights.

(The module is `list_` so that it does not shadow the builtin as an attribute of zoo.cli.)
"""

from __future__ import annotations

import argparse
import sys

import zoo
from zoo import registry

HELP = "list model names (composable space, or --pretrained weights)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*")
    parser.add_argument("--pretrained", action="store_true")


def run(args: argparse.Namespace) -> int:
    # both lists come from the registries' index (zoo/registry.py: no torch); zoo.hub only once it is imported
    if args.pretrained:
        names = registry.indexed_pretrained(args.pattern)
        if names is None:
            names = zoo.list_pretrained(args.pattern)
    else:
        names = registry.list_models(args.pattern)
    for name in names:
        print(name)
    if not names:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    return 0
