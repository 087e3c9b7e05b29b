"""dit-mtl-zoo: diffusion transformers trained as multi-task learners (DTR routing + ANT clustering/MTL).

import zoo
model = zoo.create("dit_t_dtr_uw_k5", input_size=8, in_channels=1, num_classes=10)
zoo.list_models("dit_l_dtr_*")

This module is the public facade. Its names resolve on first use (PEP 562), so `import zoo.model` or
`zoo --help` does not pay for the Hub, the trainer or the evaluation code. The layers and their import
rules are in ARCHITECTURE.md.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# A source checkout keeps the parts beside zoo/ (models/ routing/ mtl/ clustering/); the wheel installs
# them inside zoo/ (pyproject's package-dir). Either way they import as zoo.models, zoo.routing, ...
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not os.path.isdir(os.path.join(os.path.dirname(__file__), "models")) and os.path.isfile(
    os.path.join(_ROOT, "models", "__init__.py")
):
    __path__.append(_ROOT)  # noqa: F821 (the package's own __path__)

#: public name -> the module that defines it
_FACADE = {
    "CorruptWeightsError": "zoo.layout",
    "DiffusionModel": "zoo.model",
    "LossOutput": "zoo.model",
    "PretrainedCfg": "zoo.hub",
    "Trainer": "zoo.train",
    "UnknownModelError": "zoo.registry",
    "config_from_name": "zoo.config",
    "create": "zoo.hub",
    "describe": "zoo.hub",
    "get_pretrained_cfg": "zoo.hub",
    "is_model": "zoo.hub",
    "list_backbones": "zoo.registry",
    "list_models": "zoo.hub",
    "list_pretrained": "zoo.hub",
    "parse_name": "zoo.registry",
    "register_backbone": "zoo.models",
    "register_pretrained": "zoo.hub",
    "register_recipe": "zoo.registry",
}

__all__ = [
    "CorruptWeightsError",
    "DiffusionModel",
    "LossOutput",
    "PretrainedCfg",
    "Trainer",
    "UnknownModelError",
    "config_from_name",
    "create",
    "describe",
    "get_pretrained_cfg",
    "is_model",
    "list_backbones",
    "list_models",
    "list_pretrained",
    "parse_name",
    "register_backbone",
    "register_pretrained",
    "register_recipe",
]


def __getattr__(attr: str) -> Any:
    module = _FACADE.get(attr)
    if module is None:
        raise AttributeError(f"module 'zoo' has no attribute {attr!r}")
    value = getattr(importlib.import_module(module), attr)
    globals()[attr] = value  # later look-ups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FACADE))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from zoo.config import config_from_name
    from zoo.hub import (
        PretrainedCfg,
        create,
        describe,
        get_pretrained_cfg,
        is_model,
        list_models,
        list_pretrained,
        register_pretrained,
    )
    from zoo.layout import CorruptWeightsError
    from zoo.model import DiffusionModel, LossOutput
    from zoo.models import register_backbone
    from zoo.registry import UnknownModelError, list_backbones, parse_name, register_recipe
    from zoo.train import Trainer
