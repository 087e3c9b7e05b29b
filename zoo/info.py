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
    if ccfg["objective"] == "affinity":
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
