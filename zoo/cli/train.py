"""`zoo train`: train or finetune a model (the trainer and its options live in zoo.train)."""

from __future__ import annotations

import argparse

from zoo.train import add_train_arguments, main_from_args

HELP = "train or finetune a model (resumable, DDP)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return main_from_args(args) or 0
