"""`zoo convert SRC DST`: foreign DiT weights into the zoo layout (config.json + model.safetensors + card);
`zoo convert --to diffusers SRC DIR`: an unrouted zoo DiT out to a diffusers DiTPipeline folder.

Sources: an original DiT `.pt` (plain state dict or train.py checkpoint, EMA preferred; CC BY-NC 4.0
for the released ones), an ANT/DTR training checkpoint (DTR's stored mask buffers are dropped), or a
diffusers `DiTTransformer2DModel` folder / `hf-hub:` repo.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

from zoo import routing
from zoo.hub import convert, create, is_location
from zoo.layout import load_safetensors
from zoo.model import DiffusionModel, config_from_name
from zoo.models.dit import DIT_SIZES, PATCH_SIZES
from zoo.registry import UnknownModelError

HELP = "convert foreign weights (original DiT .pt, diffusers, ANT/DTR) to the zoo layout"


def infer_dit_backbone(state_dict: dict[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """The registered DiT backbone name and kwargs that fit a DiT state dict (from its shapes)."""
    try:
        proj = state_dict["x_embedder.proj.weight"]  # (hidden, in_channels, p, p)
        pos = state_dict["pos_embed"]  # (1, N, hidden)
    except KeyError as exc:
        raise ValueError(f"not a DiT state dict: missing {exc.args[0]!r}") from exc
    hidden, in_channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    name = dit_backbone_name(hidden, depth, patch)
    grid = math.isqrt(pos.shape[1])
    out_channels = state_dict["final_layer.linear.weight"].shape[0] // (patch * patch)
    kwargs = {
        "input_size": grid * patch,
        "patch_size": patch,
        "in_channels": in_channels,
        "learn_sigma": out_channels == 2 * in_channels,
    }
    table = state_dict.get("y_embedder.embedding_table.weight")
    kwargs["num_classes"] = 0 if table is None else table.shape[0] - 1
    return name, kwargs


def dit_backbone_name(hidden: int, depth: int, patch: int) -> str:
    """The registered DiT backbone of a width and depth (`_p4` / `_p8` for those patches; any other
    patch size is set as an override of the patch-2 name)."""
    size = next((s for s, v in DIT_SIZES.items() if v["hidden_size"] == hidden and v["depth"] == depth), None)
    if size is None:
        raise UnknownModelError(
            f"no registered DiT size has hidden {hidden} and depth {depth}: {DIT_SIZES}; pass --name BACKBONE "
            "(e.g. dit_t) to build it with the source's settings"
        )
    base = f"dit_{size.lower()}"
    return f"{base}_p{patch}" if patch in PATCH_SIZES and patch != 2 else base


def _diffusers_weights(src: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    folder = Path(src).expanduser()
    if src.startswith("hf-hub:"):
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(src[len("hf-hub:") :], allow_patterns=["transformer/*", "*.json"]))
    candidates = (
        sorted(folder.glob("**/diffusion_pytorch_model*.safetensors")) if folder.is_dir() else [folder]
    )
    if not candidates:
        raise FileNotFoundError(
            f"{folder}: no diffusers DiTTransformer2DModel weights (diffusion_pytorch_model.safetensors)"
        )
    weights = candidates[0]
    config_path = weights.parent / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: diffusers weights need their config.json")
    return load_safetensors(weights), json.loads(config_path.read_text())


def load_foreign(
    src: str, fmt: str = "auto", timestep_embedding: str = "diffusers", beta: float = 0.8, alpha: float = 4.0
) -> tuple[dict, dict, dict]:
    """(our state dict, DiT kwargs from the source's config, recipe settings) of a foreign checkpoint.

    A diffusers folder gives every DiT argument from its config.json; an original `.pt` has no
    config ({}), so its settings come from the weights' shapes (`infer_dit_backbone`). The recipe
    settings are what the weights were trained with that neither tells (ANT: the cosine schedule).

    `fmt="dtr"` checks the routing tables a DTR checkpoint stores against our DTR table for (beta,
    alpha) before dropping them; "auto" drops any stored mask buffers unchecked.
    """
    path = Path(src).expanduser()
    is_diffusers = (
        src.startswith("hf-hub:")
        or fmt == "diffusers"
        or (fmt == "auto" and (path.is_dir() or path.suffix == ".safetensors"))
    )
    if is_diffusers:  # the full foreign config: heads, patch, classes, sample size, channels, sigma
        state, config = _diffusers_weights(src)
        kwargs = convert.dit_config_from_diffusers(config, timestep_embedding=timestep_embedding)
        return convert.diffusers_to_dit(state, int(kwargs["input_size"])), kwargs, {}
    if not path.is_file():
        raise FileNotFoundError(f"{src} does not exist")
    state = convert.load_original_dit_checkpoint(path)
    if fmt == "dtr":
        hidden = state["x_embedder.proj.weight"].shape[0]
        table = routing.dtr_table(hidden, num_tasks=1000, beta=beta, alpha=alpha)
        state = convert.strip_dtr_mask_buffers(state, expected_tables=table)
    elif fmt == "auto":
        state = convert.strip_dtr_mask_buffers(state)
    # ANT's released code trains and samples with its create_diffusion default, squaredcos_cap_v2 (cosine)
    return state, {}, ({"schedule": "cosine"} if fmt == "ant" else {})


def convert_to_zoo(
    src: str,
    dst: str,
    name: str | None = None,
    fmt: str = "auto",
    num_classes: int | None = None,
    timestep_embedding: str = "diffusers",
    beta: float = 0.8,
    alpha: float = 4.0,
) -> Path:
    """Convert and write; the written folder loads with zoo.create('local-dir:DST')."""
    state, foreign, recipe_settings = load_foreign(src, fmt, timestep_embedding, beta=beta, alpha=alpha)
    if foreign:  # built from the foreign config, not from a registered size
        kwargs = dict(foreign)
        try:
            backbone = dit_backbone_name(kwargs["hidden_size"], kwargs["depth"], kwargs["patch_size"])
        except UnknownModelError:
            if name is None:
                raise
            backbone = None
        extra = {"timestep_freq_shift": kwargs["timestep_freq_shift"]}
    else:
        backbone, kwargs = infer_dit_backbone(state)
        extra = {}
    if num_classes is not None and num_classes != kwargs["num_classes"]:
        raise ValueError(f"the weights have {kwargs['num_classes']} classes, not {num_classes}")
    recipe = name or backbone
    model = DiffusionModel(config_from_name(recipe, **kwargs, **recipe_settings))
    missing, unexpected = model.net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{src}: does not fit {recipe}: missing {missing[:8]}, unexpected {unexpected[:8]}")
    card = {
        "description": f"Converted from {src} (format {fmt}).",
        "license": "unknown",
        "notes": "Check the licence of the source weights: the original DiT weights are CC BY-NC 4.0 (non-commercial).",
    }
    out = model.save_pretrained(dst, card=card)
    (Path(out) / "conversion.json").write_text(
        json.dumps({"source": src, "format": fmt, **extra}, indent=2) + "\n"
    )
    return Path(out)


def convert_to_diffusers(src: str, dst: str, vae: str | None = "auto") -> Path:
    """A zoo model (folder, `local-dir:`, `hf-hub:` or `arch.tag`) -> a diffusers DiTPipeline folder."""
    model = create(src) if is_location(src) else create(src, pretrained=True)
    convert.export_diffusers(model, dst, vae=vae)
    return Path(dst)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", help="a .pt file, a diffusers folder, or hf-hub:org/name (--to diffusers: a zoo model)"
    )
    parser.add_argument("dst", help="output folder (config.json, model.safetensors, README.md)")
    parser.add_argument(
        "--to",
        default="zoo",
        choices=["zoo", "diffusers"],
        help="zoo: foreign weights into the zoo layout (default); diffusers: an unrouted zoo DiT out to a "
        "DiTPipeline folder (transformer/, scheduler/, vae/)",
    )
    parser.add_argument(
        "--vae",
        default="auto",
        help="--to diffusers: the AutoencoderKL folder or repo to bundle (default: the model's own; none: skip)",
    )
    parser.add_argument("--name", default=None, help="zoo recipe name (default: inferred backbone)")
    parser.add_argument(
        "--format", default="auto", choices=["auto", "dit_original", "diffusers", "ant", "dtr"]
    )
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument(
        "--timestep-embedding",
        default="diffusers",
        choices=["diffusers", "original"],
        help="for diffusers sources: reproduce diffusers' forward (default), or the original DiT's "
        "sinusoid (what facebook/DiT-XL-2-* were trained with)",
    )
    parser.add_argument(
        "--beta", type=float, default=0.8, help="DTR beta of a --format dtr checkpoint's stored tables"
    )
    parser.add_argument(
        "--alpha", type=float, default=4.0, help="DTR alpha of a --format dtr checkpoint's stored tables"
    )


def run(args: argparse.Namespace) -> int:
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
