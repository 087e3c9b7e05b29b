"""Denoising Task Routing (Park et al., ICLR 2024): a sliding window of active channels per timestep.

Every block of the same width uses the same table (as in the released code), so a router for a
DiT holds a single (T, C) table and a U-Net router one table per distinct width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .base import Router
from .registry import register_router
from .tables import DTR_VARIANTS, DTRVariant, check_hyperparameters, dtr_table_bool


@register_router("dtr")
class DTRRouter(Router):
    """DTR router: block i of width C masks its input with row t of ``dtr_table(C, T, beta, alpha, variant)``."""

    def __init__(
        self,
        channels: int | Sequence[int],
        num_blocks: int = 1,
        num_tasks: int = 1000,
        beta: float = 0.8,
        alpha: float = 4.0,
        variant: DTRVariant = "code",
    ) -> None:
        super().__init__(channels, num_blocks=num_blocks, num_tasks=num_tasks)
        if variant not in DTR_VARIANTS:
            raise ValueError(f"variant must be one of {DTR_VARIANTS}, got {variant!r}")
        for width in set(self.channels):
            check_hyperparameters(width, num_tasks, beta, alpha)
        self.beta = float(beta)
        self.alpha = float(alpha)
        self.variant = variant
        self._buffer_of_width: dict[int, str] = {}
        for width in sorted(set(self.channels)):
            buffer_name = f"table_{width}"
            table = dtr_table_bool(width, num_tasks, self.beta, self.alpha, variant)
            self.register_buffer(buffer_name, table, persistent=False)
            self._buffer_of_width[width] = buffer_name

    def table_bool(self, block: int) -> torch.Tensor:
        return getattr(self, self._buffer_of_width[self.channels[block]])

    def options(self) -> dict[str, Any]:
        return {"beta": self.beta, "alpha": self.alpha, "variant": self.variant}
