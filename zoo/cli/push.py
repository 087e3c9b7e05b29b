"""`zoo push DIR REPO`: upload a zoo weights folder (config.json, model.safetensors, card) to the Hub."""

from __future__ import annotations

import argparse

from zoo.layout import push_folder

HELP = "upload a zoo weights folder to the Hugging Face Hub"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir")
    parser.add_argument("repo")
    parser.add_argument("--private", action="store_true")


def run(args: argparse.Namespace) -> int:
    print(push_folder(args.dir, args.repo, private=args.private))
    return 0
