"""Name -> config: the JSON-serialisable description a model is rebuilt from (config.json), with overrides.

`config_from_name("dit_t_dtr_nash_k5", input_size=8)` parses the name (zoo/registry.py), takes the
backbone's constructor arguments from its registry entry (zoo/models), and fills the routing, diffusion,
clustering, MTL and weighting sections. No network is built.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from zoo import clustering, models
from zoo.clustering import DEFAULT_SAMPLER
from zoo.registry import ROUTING_ALIASES, ModelName, UnknownModelError, parse_name

CONFIG_VERSION = 1

#: overrides that configure the routing part (grammar `_dtr`, `_rand`)
ROUTING_OVERRIDES = {"beta", "alpha", "variant", "routing_seed"}
#: overrides that configure the diffusion process
DIFFUSION_OVERRIDES = {"schedule", "num_timesteps", "normal_cdf"}
#: other recognised overrides
OTHER_OVERRIDES = {"affinity", "mtl_options", "weighting_options", "vae", "data"}
#: overrides that name the timestep sampler (clustering/samplers.py) and its options
SAMPLER_OVERRIDES = {"timestep_sampler", "timestep_sampler_options"}


def arch_class(arch: str) -> type[nn.Module]:
    """The backbone class of a config's `backbone.arch` (a registered family of zoo.models)."""
    try:
        return models.arch_class(arch)
    except models.UnknownNameError as exc:
        raise UnknownModelError(str(exc)) from None


def backbone_spec(name: str) -> dict[str, Any]:
    """The architecture dict of a registered backbone: {"arch": "dit"|"adm", "kwargs": {...}}."""
    try:
        return models.backbone_spec(name)
    except models.UnknownNameError as exc:
        raise UnknownModelError(f"{exc} (zoo.list_models() lists valid names)") from None


def arch_arguments(arch: str) -> set[str]:
    params = inspect.signature(arch_class(arch).__init__).parameters
    return {
        name
        for name in params
        if name not in ("self", "router") and params[name].kind != params[name].VAR_KEYWORD
    }


def config_from_name(name: str | ModelName, **overrides: Any) -> dict[str, Any]:
    """The full config of a named recipe with overrides applied (no network is built)."""
    parsed = parse_name(name) if isinstance(name, str) else name
    overrides = {**parsed.overrides, **overrides}
    spec = backbone_spec(parsed.backbone)
    arch_args = arch_arguments(spec["arch"])
    known = arch_args | ROUTING_OVERRIDES | DIFFUSION_OVERRIDES | OTHER_OVERRIDES | {"learn_sigma"}
    known |= SAMPLER_OVERRIDES
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown override(s) {unknown} for {parsed.full_name!r}; valid: {sorted(known)}")
    backbone_kwargs = {**spec["kwargs"], **{k: v for k, v in overrides.items() if k in arch_args}}
    if "learn_sigma" in overrides:
        backbone_kwargs["learn_sigma"] = overrides["learn_sigma"]
    learn_sigma = arch_class(spec["arch"]).resolve_learn_sigma(backbone_kwargs, overrides, spec["kwargs"])
    process = spec.get("process")
    if process is None:  # the Gaussian diffusion: no "process" key, as every config before the slot
        diffusion = {
            "schedule": overrides.get("schedule", "linear"),
            "num_timesteps": int(overrides.get("num_timesteps", 1000)),
            "learn_sigma": learn_sigma,
            # the recipes reproduce the released ADM / DiT / ANT / DTR code: its tanh CDF in the t = 0 NLL
            "normal_cdf": overrides.get("normal_cdf", "adm"),
        }
    else:  # another process (sit_*: "flow"); `schedule` names its path (SiT's linear interpolant)
        if "normal_cdf" in overrides:
            raise UnknownModelError(
                f"normal_cdf configures the Gaussian diffusion's t = 0 likelihood; {parsed.full_name!r} trains "
                f"with the {process!r} process"
            )
        diffusion = {
            "process": process,
            "schedule": overrides.get("schedule", "linear"),
            "num_timesteps": int(overrides.get("num_timesteps", 1000)),
            "learn_sigma": learn_sigma,
        }
    routing = None
    if parsed.routing:
        routing = {"name": ROUTING_ALIASES.get(parsed.routing, parsed.routing)}
        for key in ("beta", "alpha", "variant"):
            if key in overrides:
                routing[key] = overrides[key]
        if "routing_seed" in overrides:
            routing["seed"] = overrides["routing_seed"]
    elif ROUTING_OVERRIDES & set(overrides):
        raise UnknownModelError(
            f"{sorted(ROUTING_OVERRIDES & set(overrides))} configure routing, but {parsed.full_name!r} has none "
            f"(add a routing part, e.g. {parsed.backbone}_dtr)"
        )
    clustering = {"k": parsed.k or 1, "objective": parsed.objective or "uniform"}
    mtl_cfg = {"name": parsed.balancer or "linear", **dict(overrides.get("mtl_options") or {})}
    weighting = None
    if parsed.weighting:
        weighting = {"name": parsed.weighting, **dict(overrides.get("weighting_options") or {})}
    sampler = {"name": overrides.get("timestep_sampler") or DEFAULT_SAMPLER}
    sampler.update(overrides.get("timestep_sampler_options") or {})
    # written only when it is not the default (stratified, no options): other configs stay as they were
    sampler = {"timestep_sampler": sampler} if sampler != {"name": DEFAULT_SAMPLER} else {}
    return {
        "config_version": CONFIG_VERSION,
        "name": parsed.arch_name,
        "backbone": {"name": parsed.backbone, "arch": spec["arch"], "kwargs": backbone_kwargs},
        "routing": routing,
        "diffusion": diffusion,
        "clustering": clustering,
        "mtl": mtl_cfg,
        "weighting": weighting,
        **sampler,
        "vae": overrides.get("vae"),
        "data": overrides.get("data"),
        "_affinity": overrides.get("affinity"),
    }


def _clusters_with_affinity(config: dict[str, Any], affinity: Any) -> dict[str, Any]:

    ccfg = config["clustering"]
    matrix = torch.as_tensor(affinity, dtype=torch.float64)
    clusters = clustering.interval_clustering(
        ccfg["k"], ccfg["objective"], affinity=matrix, num_timesteps=config["diffusion"]["num_timesteps"]
    )
    return clusters.to_dict()
