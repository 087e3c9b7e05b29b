"""The registry of pretrained weights (`arch.tag`, as timm's pretrained cfgs).

The built-in configs are data (zoo/hub/pretrained.py, the shipped manifest); they are registered on the
first look-up, not as an import side effect. `register_pretrained` adds one of your own.
"""

from __future__ import annotations

import difflib

from zoo.hub.pretrained import PRETRAINED, PretrainedCfg
from zoo.hub.shipped import shipped_cfgs
from zoo.registry import UnknownModelError, parse_name, pretrained_matches

_PRETRAINED: dict[str, PretrainedCfg] = {}


def register_pretrained(cfg: PretrainedCfg) -> PretrainedCfg:
    """Register weights for `cfg.arch`.`cfg.tag` (a name already registered, built-ins included, is an error)."""
    _load_builtin_configs()
    if cfg.name in _PRETRAINED:
        raise ValueError(f"pretrained weights {cfg.name!r} are already registered")
    parse_name(cfg.arch)
    _PRETRAINED[cfg.name] = cfg
    return cfg


def list_pretrained(pattern: str = "*") -> list[str]:
    """`arch.tag` names with weights, fnmatch-filtered (the first tag of an arch is its default)."""
    _load_builtin_configs()
    return [n for n in _PRETRAINED if pretrained_matches(n, pattern)]


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The weight config of `arch.tag`, or of the default (first registered) tag of `arch`."""
    _load_builtin_configs()
    if name in _PRETRAINED:
        return _PRETRAINED[name]
    arch = name.split(".")[0]
    if "." not in name:
        for cfg in _PRETRAINED.values():
            if cfg.arch == arch and cfg.has_weights:
                return cfg
    close = difflib.get_close_matches(name, list(_PRETRAINED), n=5, cutoff=0.4)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownModelError(f"no pretrained weights named {name!r}.{hint} (zoo.list_pretrained() lists them)")


_BUILTINS_LOADED = False


def _load_builtin_configs() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        for cfg in [*PRETRAINED, *shipped_cfgs()]:  # the papers' weights, then the project's own
            register_pretrained(cfg)
