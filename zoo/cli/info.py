"""`zoo info NAME`: the parts, parameters, GFLOPs, clusters and registered weights of a model name.

Built-in names are read from the registries' index (zoo/registry.py, `indexed_description`: no torch);
a weights folder, a K the index does not hold, ... go through `zoo.describe`. Same output either way.
"""

from __future__ import annotations

import argparse
import json

import zoo
from zoo import registry

HELP = "parts, parameters, GFLOPs, clusters and weights of a name"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    parser.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    # the registries' index answers for the built-in names without torch; zoo.describe for the rest
    info = registry.indexed_description(args.name)
    if info is None:
        info = zoo.describe(args.name)
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
