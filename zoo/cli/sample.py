"""`zoo sample`: a sample grid or NPZ from a model (the sampler and its options live in zoo.eval.sampling)."""

from __future__ import annotations

import argparse

from zoo.eval.sampling import add_sample_arguments, main_from_args

HELP = "sample a grid / NPZ from a model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_sample_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return main_from_args(args) or 0
