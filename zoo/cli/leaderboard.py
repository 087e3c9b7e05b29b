"""`zoo leaderboard`: evaluate the shipped models under one protocol (zoo.eval.leaderboard)."""

from __future__ import annotations

import argparse

from zoo.eval.html import main_from_json, write_page
from zoo.eval.leaderboard import add_leaderboard_arguments, main_from_args

HELP = "evaluate shipped models"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_leaderboard_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.from_json:  # the page of an existing JSON: nothing is sampled
        return main_from_json(args)
    return main_from_args(args, page_writer=write_page if args.html else None) or 0
