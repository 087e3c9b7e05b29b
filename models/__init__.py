"""Backbones: the DiT family and the ADM U-Net (own code, the original key names) with per-block channel masks.

`@register_backbone` / `@register_arch` (registry.py) add one; `backbone_spec(name)` and `arch_class(key)` read them.
"""

from .adm import ADM_CONFIGS, ADMUNet, adm_config
from .dit import DIT_SIZES, PATCH_SIZES, DiT, DiTBlock, count_params, dit_config, gflops
from .registry import (
    ARCH_FACTS,
    UnknownNameError,
    arch_class,
    backbone_spec,
    is_backbone,
    list_archs,
    list_backbones,
    register_arch,
    register_backbone,
)

__all__ = [
    "ADM_CONFIGS",
    "ARCH_FACTS",
    "ADMUNet",
    "DIT_SIZES",
    "PATCH_SIZES",
    "DiT",
    "DiTBlock",
    "UnknownNameError",
    "adm_config",
    "arch_class",
    "backbone_spec",
    "count_params",
    "dit_config",
    "gflops",
    "is_backbone",
    "list_archs",
    "list_backbones",
    "register_arch",
    "register_backbone",
]
