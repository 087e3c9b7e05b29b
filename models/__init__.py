"""Backbones: the DiT family and the ADM U-Net (own code, the original key names) with per-block channel masks."""

from .adm import ADM_CONFIGS, ADMUNet, adm_config
from .dit import DIT_SIZES, PATCH_SIZES, DiT, DiTBlock, count_params, dit_config, gflops

__all__ = [
    "ADM_CONFIGS",
    "ADMUNet",
    "DIT_SIZES",
    "PATCH_SIZES",
    "DiT",
    "DiTBlock",
    "adm_config",
    "count_params",
    "dit_config",
    "gflops",
]
