"""dit-mtl-zoo: diffusion transformers trained as multi-task learners (DTR routing + ANT clustering/MTL).

import zoo
model = zoo.create("dit_t_dtr_uw_k5", input_size=8, in_channels=1, num_classes=10)
zoo.list_models("dit_l_dtr_*")
"""

from __future__ import annotations

from typing import Any

from zoo.hub import (
    CorruptWeightsError,
    PretrainedCfg,
    create,
    get_pretrained_cfg,
    is_model,
    list_pretrained,
    register_pretrained,
)
from zoo.model import DiffusionModel, LossOutput, config_from_name
from zoo.registry import (
    UnknownModelError,
    list_backbones,
    list_models,
    parse_name,
    register_backbone,
    register_recipe,
)

__version__ = "0.1.0"

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


def describe(name: str, **overrides: Any) -> dict[str, Any]:
    """Parts, parameter count, GFLOPs, clusters, available weights and licences of a model name."""
    from zoo.info import describe as _describe

    return _describe(name, **overrides)


def __getattr__(attr: str) -> Any:  # heavy or optional parts load on first use
    if attr == "Trainer":
        from zoo.train import Trainer

        return Trainer
    raise AttributeError(f"module 'zoo' has no attribute {attr!r}")
