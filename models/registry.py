"""The backbone registry: one decorator per architecture family, one per named backbone (as timm does).

An architecture family is an `nn.Module` class registered with `@register_arch(key)`; the key is what a
model's config.json stores (`backbone.arch`). The class states the facts the other layers need, as class
attributes and methods (defaults below, in `ARCH_FACTS`):

* `stem_key`, `head_key`, `label_key`: state-dict prefixes of the input conv, the output layer and the
  label table (pretrained weights adapt these to other channel or class counts);
* `resizable_keys`: entries recomputed for the model's own grid (DiT's fixed sin-cos `pos_embed`);
* `fsdp_units(self)`: the sub-modules that each become one FSDP unit;
* `resolve_learn_sigma(kwargs, overrides, defaults)`: applies a `learn_sigma` override to the
  constructor arguments and returns whether the output carries the variance.

A named backbone is an entrypoint returning `{"arch": key, "kwargs": {...}}` (and optionally
`"process"`: the generative process it trains with, e.g. "flow"; absent means "ddpm"), registered with
`@register_backbone(name)`. Adding a backbone is one file with one class and one decorator.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Any

from torch import nn

Entry = Callable[[], dict[str, Any]]

_ARCHS: dict[str, type[nn.Module]] = {}
_BACKBONES: dict[str, Entry] = {}

#: the facts a family states, with what a class that states none gets
ARCH_FACTS = ("stem_key", "head_key", "label_key", "resizable_keys", "fsdp_units", "resolve_learn_sigma")


class UnknownNameError(KeyError, ValueError):
    """A name the registry does not hold (a KeyError, as a dict miss, and a ValueError, as bad input)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _check_name(name: str, kind: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"{kind} names are lower-case identifiers, got {name!r}")


def register_arch(key: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Register an architecture family (an nn.Module class) under the key configs store."""
    _check_name(key, "architecture")

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"@register_arch({key!r}) expects an nn.Module subclass, got {cls!r}")
        if key in _ARCHS and _ARCHS[key] is not cls:
            raise ValueError(f"architecture {key!r} is already registered to {_ARCHS[key].__qualname__}")
        missing = [fact for fact in ARCH_FACTS if not hasattr(cls, fact)]
        if missing:
            raise TypeError(f"{cls.__qualname__} must state {missing} to be registered (models/registry.py)")
        cls.arch = key
        _ARCHS[key] = cls
        return cls

    return decorator


def register_backbone(name: str) -> Callable[[Entry], Entry]:
    """Register a backbone entrypoint returning `{"arch": ..., "kwargs": {...}}` (timm style)."""
    _check_name(name, "backbone")

    def decorator(fn: Entry) -> Entry:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        _BACKBONES[name] = fn
        return fn

    return decorator


def list_backbones() -> list[str]:
    return sorted(_BACKBONES)


def list_archs() -> list[str]:
    return sorted(_ARCHS)


def is_backbone(name: str) -> bool:
    return name in _BACKBONES


def _miss(kind: str, name: Any, pool: list[str]) -> UnknownNameError:
    matches = difflib.get_close_matches(str(name), pool, n=5, cutoff=0.4)
    hint = f" Did you mean: {', '.join(matches)}?" if matches else ""
    return UnknownNameError(f"unknown {kind} {name!r}; expected one of {pool}.{hint}")


def backbone_spec(name: str) -> dict[str, Any]:
    """The architecture dict of a registered backbone: {"arch": key, "kwargs": {...}} (a fresh copy)."""
    if name not in _BACKBONES:
        raise _miss("backbone", name, list_backbones())
    spec = _BACKBONES[name]()
    if spec.get("arch") not in _ARCHS:
        raise _miss(f"architecture (of backbone {name!r})", spec.get("arch"), list_archs())
    out = {"arch": spec["arch"], "kwargs": dict(spec["kwargs"])}
    if spec.get("process") is not None:  # the generative process it trains with (absent: "ddpm")
        if not isinstance(spec["process"], str):
            raise TypeError(f"backbone {name!r}: process must be a process name, got {spec['process']!r}")
        out["process"] = spec["process"]
    return out


def arch_class(arch: str) -> type[nn.Module]:
    """The nn.Module class of an architecture key (`backbone.arch` of a config)."""
    if arch not in _ARCHS:
        raise _miss("backbone architecture", arch, list_archs())
    return _ARCHS[arch]
