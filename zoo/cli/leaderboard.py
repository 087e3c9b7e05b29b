"""`zoo leaderboard`: evaluate the shipped models under one protocol (zoo.eval.leaderboard)."""

from __future__ import annotations

import argparse

from zoo.eval.leaderboard import add_leaderboard_arguments, main_from_args

HELP = "evaluate shipped models"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_leaderboard_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return main_from_args(args) or 0
