"""Pretrained weights: the registry of weight configs (data), resolution (local file -> Hub -> URL),
`create`, converters of foreign formats, model cards that depend on registered weights, and `describe`.

Imports the core (zoo/config.py, model.py, layout.py, ...) and the parts; nothing below imports it.
"""

from __future__ import annotations

from zoo.hub.create import (
    adapt_input_conv,
    adapt_pretrained_state_dict,
    create,
    hub_folder,
    is_location,
    is_model,
    load_checkpoint,
    pretrained_cfg_dict,
    resolve_file,
)
from zoo.hub.info import describe
from zoo.hub.pretrained import PretrainedCfg
from zoo.hub.registry import get_pretrained_cfg, list_pretrained, register_pretrained
from zoo.hub.shipped import PACKAGE_WEIGHTS
from zoo.layout import CorruptWeightsError
from zoo.registry import list_models as _composable


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Names matching an fnmatch pattern: the composable space, or (pretrained=True) `name.tag`s with weights."""
    if pretrained:
        return list_pretrained(pattern)
    return _composable(pattern)


__all__ = [
    "PACKAGE_WEIGHTS",
    "CorruptWeightsError",
    "PretrainedCfg",
    "adapt_input_conv",
    "adapt_pretrained_state_dict",
    "create",
    "describe",
    "get_pretrained_cfg",
    "hub_folder",
    "is_location",
    "is_model",
    "list_models",
    "list_pretrained",
    "load_checkpoint",
    "pretrained_cfg_dict",
    "register_pretrained",
    "resolve_file",
]
