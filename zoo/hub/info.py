"""`zoo.describe(name)`: what a name builds, without allocating its weights (meta device)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zoo import clustering
from zoo.config import arch_class
from zoo.diffusion import build_process
from zoo.hub.create import _backbone_overrides_from, _location_config, _vae_override, is_location
from zoo.hub.registry import _PRETRAINED, _load_builtin_configs, get_pretrained_cfg
from zoo.hub.shipped import PACKAGE_WEIGHTS
from zoo.layout import read_config
from zoo.models.dit import gflops
from zoo.registry import ModelName, parse_name
from zoo.validate import check_recipe

#: how `parameters` is counted, here, in the cards and in the README's size table (the DiT paper's way)
PARAMETER_COUNT = "all parameters, the fixed sin-cos pos_embed included (trainable_parameters excludes it)"


def tag_overrides(parsed) -> tuple[Any, dict[str, Any]]:
    """The weight config of a tagged name and the settings it fixes, as `zoo.create(name.tag)` applies them.

    For the zoo's own weights whose folder is on disk (the shipped ones) the folder's config.json is the
    truth (what `pretrained=True` builds); otherwise the weight config's overrides.
    """
    cfg = get_pretrained_cfg(parsed.full_name)
    out = {**cfg.overrides, **_vae_override(cfg)}
    if cfg.format == "zoo" and cfg.file:
        folder = Path(cfg.file).expanduser()
        folder = folder if folder.is_absolute() else PACKAGE_WEIGHTS / folder
        if (folder / "config.json").is_file():
            out.update(_backbone_overrides_from(read_config(folder), parsed.backbone))
    return cfg, out


def intervals_of(config: dict[str, Any], affinity: Any = None) -> list:
    """The timestep intervals of a config's clusters (`describe`'s `clusters`): the config's own, or those
    its objective finds over its process's SNR (or over `affinity`, for the affinity objective)."""
    dcfg = config["diffusion"]
    snr = build_process(dcfg).snr
    ccfg = config["clustering"]
    if ccfg.get("intervals"):
        return [list(interval) for interval in ccfg["intervals"]]
    if ccfg["objective"] == "affinity":
        return clustering.interval_clustering(
            ccfg["k"],
            "affinity",
            affinity=torch.as_tensor(affinity, dtype=torch.float64),
            num_timesteps=dcfg["num_timesteps"],
        ).intervals
    return clustering.interval_clustering(
        ccfg["k"], ccfg["objective"], snr=snr, num_timesteps=dcfg["num_timesteps"]
    ).intervals


def weights_of(arch: str) -> list[dict[str, Any]]:
    """The registered weights of a name without its tag (`describe`'s `weights`), in registration order."""
    _load_builtin_configs()
    return [
        {
            "name": cfg.name,
            "license": cfg.license,
            "format": cfg.format,
            "schedule": cfg.overrides.get("schedule", "linear"),
            "description": cfg.description,
            "results": cfg.results,
        }
        for cfg in _PRETRAINED.values()
        if cfg.arch == arch
    ]


def describe(name: str, **overrides: Any) -> dict[str, Any]:
    """Accepts exactly the names `zoo.create` accepts (`zoo.validate.check_recipe`: unknown tags and configs
    that cannot build are errors), with the tag's settings applied as `zoo.create(name.tag)` applies them."""
    tagged = None
    if is_location(name):  # a weights folder: its (validated) config.json, as `zoo.create` reads it
        if overrides:
            raise TypeError(f"overrides {sorted(overrides)} cannot change a model loaded from {name}")
        config, _ = _location_config(str(name))
        parsed = _parts_of(config)
    else:
        parsed = parse_name(name)
        if parsed.tag:  # an unknown tag is an error here, as in create
            tagged, fixed = tag_overrides(parsed)
            overrides = {**fixed, **overrides}
        config = check_recipe(parsed, overrides)
    affinity = config.pop("_affinity", None)
    kwargs = config["backbone"]["kwargs"]
    with torch.device("meta"):
        net = arch_class(config["backbone"]["arch"])(**kwargs)
    params = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    flops = None
    if config["backbone"]["arch"] == "dit":
        flops = gflops(net)
    dcfg = config["diffusion"]
    clusters = intervals_of(config, affinity)
    weights = weights_of(parsed.arch_name)
    return {
        "name": parsed.full_name,
        "parts": {
            "backbone": parsed.backbone,
            "routing": parsed.routing or "none",
            "mtl": config["mtl"]["name"],
            "weighting": parsed.weighting or "none",
            "clusters": parsed.k or 1,
            "objective": parsed.objective or "uniform",
        },
        "backbone_kwargs": kwargs,
        "parameters": params,
        "trainable_parameters": trainable,
        "parameter_count": PARAMETER_COUNT,
        "diffusion": dcfg,
        "vae": config.get("vae"),
        "pretrained": tagged.name if tagged is not None else None,
        "gflops": flops,
        "clusters": clusters,
        "routing": config.get("routing"),
        "mtl": config["mtl"],
        "weights": weights,
    }


def _parts_of(config: dict[str, Any]) -> Any:
    """The name parts a saved config records (what `describe` reports for a weights folder)."""
    clusters = config["clustering"]
    return ModelName(
        backbone=config["backbone"]["name"],
        routing=(config.get("routing") or {}).get("name"),
        balancer=config["mtl"]["name"] if config["mtl"]["name"] != "linear" else None,
        weighting=(config.get("weighting") or {}).get("name"),
        k=clusters["k"] if clusters["k"] > 1 or clusters.get("objective") != "uniform" else None,
        objective=clusters.get("objective"),
    )
