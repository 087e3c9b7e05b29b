"""`zoo.describe(name)`: what a name builds, without allocating its weights (meta device)."""

from __future__ import annotations

from typing import Any

import torch

from zoo.diffusion import GaussianDiffusion
from zoo.hub import _PRETRAINED, _load_builtin_configs
from zoo.model import _arch_class
from zoo.validate import check_name


def describe(name: str, **overrides: Any) -> dict[str, Any]:
    """Accepts exactly the names `zoo.create` accepts (`zoo.validate.check_name`: unknown tags and configs
    that cannot build are errors), with the tag's settings applied."""
    from zoo.hub import _location_config, is_location

    if is_location(name):  # a weights folder: its (validated) config.json, as `zoo.create` reads it
        if overrides:
            raise TypeError(f"overrides {sorted(overrides)} cannot change a model loaded from {name}")
        config, _ = _location_config(str(name))
        parsed = _parts_of(config)
    else:
        parsed, _, config = check_name(name, **overrides)
    affinity = config.pop("_affinity", None)
    kwargs = config["backbone"]["kwargs"]
    with torch.device("meta"):
        net = _arch_class(config["backbone"]["arch"])(**kwargs)
    params = sum(p.numel() for p in net.parameters() if p.requires_grad)
    flops = None
    if config["backbone"]["arch"] == "dit":
        from models.dit import gflops

        flops = gflops(net)
    import clustering

    dcfg = config["diffusion"]
    snr = GaussianDiffusion(dcfg["schedule"], dcfg["num_timesteps"], dcfg["learn_sigma"]).snr
    ccfg = config["clustering"]
    if ccfg.get("intervals"):
        clusters = [list(interval) for interval in ccfg["intervals"]]
    elif ccfg["objective"] == "affinity":
        clusters = clustering.interval_clustering(
            ccfg["k"],
            "affinity",
            affinity=torch.as_tensor(affinity, dtype=torch.float64),
            num_timesteps=dcfg["num_timesteps"],
        ).intervals
    else:
        clusters = clustering.interval_clustering(
            ccfg["k"], ccfg["objective"], snr=snr, num_timesteps=dcfg["num_timesteps"]
        ).intervals
    _load_builtin_configs()
    weights = [
        {"name": cfg.name, "license": cfg.license, "format": cfg.format, "results": cfg.results}
        for cfg in _PRETRAINED.values()
        if cfg.arch == parsed.arch_name
    ]
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
        "gflops": flops,
        "clusters": clusters,
        "routing": config.get("routing"),
        "mtl": config["mtl"],
        "weights": weights,
    }


def _parts_of(config: dict[str, Any]) -> Any:
    """The name parts a saved config records (what `describe` reports for a weights folder)."""
    from zoo.registry import ModelName

    clusters = config["clustering"]
    return ModelName(
        backbone=config["backbone"]["name"],
        routing=(config.get("routing") or {}).get("name"),
        balancer=config["mtl"]["name"] if config["mtl"]["name"] != "linear" else None,
        weighting=(config.get("weighting") or {}).get("name"),
        k=clusters["k"] if clusters["k"] > 1 or clusters.get("objective") != "uniform" else None,
        objective=clusters.get("objective"),
    )
