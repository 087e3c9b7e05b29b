"""`zoo encode`: precompute the VAE latents of an image folder (the encoder and its options live in zoo.data)."""

from __future__ import annotations

import argparse

from zoo.data import add_encode_arguments, encode_main

HELP = "precompute VAE latents of an image folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_encode_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return encode_main(args) or 0
