"""Checks of what a user hands the zoo, before any work: model configs (a weights folder's config.json or
the config a name and its overrides build), weights (dtype, finite values, learned sigma) and the one
rule `zoo.create` and `zoo.describe` share for names (`check_recipe`).

Every error names where the value came from (the file, or the name), the field, what was expected and
what was found.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from zoo import clustering as _clustering
from zoo import models
from zoo.config import CONFIG_VERSION, arch_arguments, config_from_name

#: backbone settings that count things (>= 1)
POSITIVE_INTS = (
    "input_size",
    "image_size",
    "patch_size",
    "in_channels",
    "out_channels",
    "hidden_size",
    "depth",
    "num_heads",
    "model_channels",
    "num_res_blocks",
)
#: settings where -1 means "derive it" (guided-diffusion's head options)
MINUS_ONE_OR_POSITIVE = ("num_head_channels", "num_heads_upsample")
PROBABILITIES = ("class_dropout_prob", "dropout")
FLAGS = ("learn_sigma", "use_scale_shift_norm", "resblock_updown", "use_new_attention_order", "use_fp16")
POSITIVE_INT_LISTS = ("channel_mult", "attention_resolutions")
ARCHS = ("dit", "adm")


class ConfigError(ValueError):
    """A model config (config.json, or a name with overrides) that cannot build a model."""


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _fail(source: str, field: str, expected: str, value: Any) -> None:
    raise ConfigError(f"{source}: {field}: expected {expected}, found {value!r} ({_type_name(value)})")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_backbone_kwargs(kwargs: Any, source: str, field: str = "backbone.kwargs") -> None:
    """Types and ranges of the backbone settings a config or an override gives."""
    if not isinstance(kwargs, dict):
        _fail(source, field, "an object of backbone settings", kwargs)
    for key, value in kwargs.items():
        where = f"{field}.{key}"
        if key in POSITIVE_INTS and not (_is_int(value) and value >= 1):
            _fail(source, where, "an int >= 1", value)
        elif key == "num_classes" and not (_is_int(value) and value >= 0):
            _fail(source, where, "an int >= 0 (0 = unconditional)", value)
        elif key in MINUS_ONE_OR_POSITIVE and not (_is_int(value) and (value == -1 or value >= 1)):
            _fail(source, where, "an int >= 1, or -1", value)
        elif key in PROBABILITIES and not (_is_real(value) and 0.0 <= value <= 1.0):
            _fail(source, where, "a number in [0, 1]", value)
        elif key == "mlp_ratio" and not (_is_real(value) and math.isfinite(value) and value > 0):
            _fail(source, where, "a finite number > 0", value)
        elif key in FLAGS and not isinstance(value, bool):
            _fail(source, where, "true or false", value)
        elif key in POSITIVE_INT_LISTS and not (
            isinstance(value, (list, tuple)) and value and all(_is_int(v) and v >= 1 for v in value)
        ):
            _fail(source, where, "a non-empty list of ints >= 1", value)


def _section(config: dict, key: str, source: str, optional: bool = False) -> dict | None:
    if key not in config:
        if optional:
            return None
        _fail(source, key, "an object (the section is missing)", None)
    value = config[key]
    if value is None and optional:
        return None
    if not isinstance(value, dict):
        _fail(source, key, "an object" + (" or null" if optional else ""), value)
    return value


def _named(section: dict, field: str, source: str) -> None:
    if not isinstance(section.get("name"), str) or not section["name"]:
        _fail(source, f"{field}.name", "a non-empty string", section.get("name"))


def validate_config(config: Any, source: str) -> dict[str, Any]:
    """Check a model config as `DiffusionModel(config)` reads it; return it. ConfigError names the field."""
    if not isinstance(config, dict):
        _fail(source, "(top level)", "a JSON object", config)
    version = config.get("config_version")
    if version != CONFIG_VERSION or isinstance(version, bool):
        _fail(source, "config_version", f"{CONFIG_VERSION} (the only version this zoo reads)", version)
    if "name" in config and not isinstance(config["name"], str):
        _fail(source, "name", "a string", config["name"])
    backbone = _section(config, "backbone", source)
    _named(backbone, "backbone", source)
    if backbone.get("arch") not in models.list_archs():
        _fail(source, "backbone.arch", f"one of {models.list_archs()}", backbone.get("arch"))
    kwargs = backbone.get("kwargs")
    check_backbone_kwargs(kwargs, source)
    known = arch_arguments(backbone["arch"])
    unknown = sorted(set(kwargs) - known)
    if unknown:
        _fail(source, "backbone.kwargs", f"settings of {backbone['arch']!r} ({sorted(known)})", unknown)
    diffusion = _section(config, "diffusion", source)
    if not isinstance(diffusion.get("schedule"), str):
        _fail(
            source, "diffusion.schedule", "a string such as 'linear' or 'cosine'", diffusion.get("schedule")
        )
    steps = diffusion.get("num_timesteps")
    if not (_is_int(steps) and steps >= 1):
        _fail(source, "diffusion.num_timesteps", "an int >= 1", steps)
    if not isinstance(diffusion.get("learn_sigma"), bool):
        _fail(source, "diffusion.learn_sigma", "true or false", diffusion.get("learn_sigma"))
    clustering = _section(config, "clustering", source)
    k = clustering.get("k")
    if not (_is_int(k) and 1 <= k <= steps):
        _fail(source, "clustering.k", f"an int in [1, {steps}] (diffusion.num_timesteps)", k)
    if not isinstance(clustering.get("objective"), str):
        _fail(source, "clustering.objective", "a string such as 'uniform'", clustering.get("objective"))
    if "intervals" in clustering and not isinstance(clustering["intervals"], list):
        _fail(source, "clustering.intervals", "a list of [first, last] timesteps", clustering["intervals"])
    _named(_section(config, "mtl", source), "mtl", source)
    for key in ("routing", "weighting"):
        section = _section(config, key, source, optional=True)
        if section is not None:
            _named(section, key, source)
    sampler = _section(config, "timestep_sampler", source, optional=True)
    if sampler is not None:
        check_timestep_sampler(sampler, source, k, steps)
    vae = _section(config, "vae", source, optional=True)
    if vae is not None and not isinstance(vae.get("repo"), str):
        _fail(source, "vae.repo", "a string (a diffusers AutoencoderKL id or path)", vae.get("repo"))
    learn_sigma = diffusion["learn_sigma"]
    if backbone["arch"] == "dit":
        own = kwargs.get("learn_sigma", True)
        if own != learn_sigma:
            _fail(source, "backbone.kwargs.learn_sigma", f"{learn_sigma} as diffusion.learn_sigma", own)
    elif {"in_channels", "out_channels"} <= set(kwargs):
        want = kwargs["in_channels"] * (2 if learn_sigma else 1)
        if kwargs["out_channels"] != want:
            _fail(
                source,
                "backbone.kwargs.out_channels",
                f"{want} (in_channels x {2 if learn_sigma else 1}, diffusion.learn_sigma={learn_sigma})",
                kwargs["out_channels"],
            )
    return config


def check_timestep_sampler(section: dict, source: str, k: int, steps: int) -> None:
    """The `timestep_sampler` section ({"name": ..., **options}; absent = stratified): a registered name
    whose options build a sampler over K clusters of the T tasks (K even intervals stand in for the
    clustering, which the options may depend on only through K)."""
    _named(section, "timestep_sampler", source)
    name = section["name"]
    if name not in _clustering.list_samplers():
        _fail(source, "timestep_sampler.name", f"one of {_clustering.list_samplers()}", name)
    bounds = [round(i * steps / k) for i in range(k + 1)]
    stand_in = _clustering.TaskClusters([(bounds[i], bounds[i + 1] - 1) for i in range(k)], steps)
    options = {key: value for key, value in section.items() if key != "name"}
    try:
        _clustering.build_sampler(name, stand_in, **options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source}: timestep_sampler ({name!r}, options {options}): {error}") from None


def check_weights(state_dict: Any, source: str, expected: dict[str, torch.Tensor] | None = None) -> None:
    """Refuse weights that are not floating point where the model's are, or hold NaN/inf."""
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) for k in state_dict):
        raise ConfigError(f"{source}: expected a state dict of named tensors, found {_type_name(state_dict)}")
    wrong, nonfinite = [], []
    for key, value in state_dict.items():
        if not torch.is_tensor(value):
            wrong.append(f"{key!r} is a {_type_name(value)}")
            continue
        floating = expected is None or key not in expected or expected[key].is_floating_point()
        if floating and not value.is_floating_point():
            wrong.append(f"{key!r} is {str(value.dtype).replace('torch.', '')}")
        elif value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            nonfinite.append(f"{key!r} ({bad} of {value.numel()} values)")
    if wrong:
        raise ConfigError(
            f"{source}: weights must be floating point (float16, bfloat16, float32, float64): "
            + "; ".join(wrong[:5])
            + (f"; and {len(wrong) - 5} more" if len(wrong) > 5 else "")
        )
    if nonfinite:
        raise ConfigError(
            f"{source}: weights hold NaN or inf: "
            + ", ".join(nonfinite[:5])
            + (f" and {len(nonfinite) - 5} more tensors" if len(nonfinite) > 5 else "")
            + "; refused (a diverged or corrupt checkpoint?)"
        )


def check_learn_sigma(config: dict[str, Any], state_dict: dict[str, torch.Tensor], source: str) -> None:
    """The weights' output width agrees with the config's learn_sigma (eps only, or eps and variance)."""
    kwargs = config["backbone"]["kwargs"]
    learn_sigma = config["diffusion"]["learn_sigma"]
    channels = kwargs.get("in_channels")
    if config["backbone"]["arch"] == "dit":
        weight, per_channel = state_dict.get("final_layer.linear.weight"), kwargs.get("patch_size", 2) ** 2
    else:
        weight, per_channel = state_dict.get("out.2.weight"), 1
    if not torch.is_tensor(weight) or not _is_int(channels):
        return
    found = weight.shape[0]
    if found == per_channel * channels * (1 if learn_sigma else 2):
        raise ConfigError(
            f"{source}: diffusion.learn_sigma: the config says {learn_sigma}, but the weights' output layer has "
            f"{found} outputs = {'1' if learn_sigma else '2'} x in_channels"
            f"{' x patch_size^2' if per_channel > 1 else ''} (learn_sigma={not learn_sigma})"
        )


def check_recipe(parsed: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """The config a parsed name with overrides builds, checked (ranges, types, what the parts need)."""
    config = config_from_name(parsed, **overrides)
    source = repr(parsed.full_name) + (" with overrides" if overrides else "")
    validate_config({k: v for k, v in config.items() if k != "_affinity"}, source)
    if config["clustering"]["objective"] == "affinity" and config.get("_affinity") is None:
        steps = config["diffusion"]["num_timesteps"]
        raise ConfigError(
            f"{source}: the 'affinity' objective clusters a measured task-affinity matrix: pass affinity= "
            f"(a ({steps}, {steps}) matrix, e.g. from `zoo affinity`), or name another objective"
        )
    return config


# ------------------------------------------------------------------------------ command-line numbers


def int_at_least(low: int):
    """An argparse type: an int >= low (argparse names the flag and exits 2 before any work)."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def finite_float(low: float | None = None, high: float | None = None, note: str = ""):
    """An argparse type: a finite float in [low, high] (NaN and inf are refused)."""
    import argparse

    bounds = (
        f"in [{low:g}, {high:g}]"
        if low is not None and high is not None
        else f">= {low:g}"
        if low is not None
        else "any"
    )
    expected = f"a finite number {bounds}" + (f" ({note})" if note else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if (
            not math.isfinite(value)
            or (low is not None and value < low)
            or (high is not None and value > high)
        ):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = expected
    return parse


def check_sampling_numbers(guidance: Any, eta: Any) -> None:
    """Guidance a finite number >= 0 (1 = none) and DDIM eta in [0, 1]: NaN would draw black images."""
    import numbers

    if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real) or not math.isfinite(guidance):
        raise ValueError(f"guidance must be a finite number >= 0 (1 = no guidance), got {guidance!r}")
    if guidance < 0:
        raise ValueError(f"guidance must be a finite number >= 0 (1 = no guidance), got {guidance!r}")
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not (0.0 <= eta <= 1.0):
        raise ValueError(
            f"eta must be a number in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like), got {eta!r}"
        )
