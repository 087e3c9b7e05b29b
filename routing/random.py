"""Random routing, the DTR paper's baseline: each task uses ``int(C * beta)`` channels chosen at random.

Tables are drawn independently per block, in block order, from one CPU ``torch.Generator`` seeded with
``seed``: the seed is part of the config, so a checkpoint's router is rebuilt exactly. Block 0's table
equals ``random_table(channels[0], num_tasks, beta, seed)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .base import Router
from .registry import register_router
from .tables import check_hyperparameters, random_table_bool


@register_router("random")
class RandomRouter(Router):
    """Random routing: one bool (T, C_i) table per block, stored compactly and converted on gather."""

    def __init__(
        self,
        channels: int | Sequence[int],
        num_blocks: int = 1,
        num_tasks: int = 1000,
        beta: float = 0.8,
        seed: int = 0,
    ) -> None:
        super().__init__(channels, num_blocks=num_blocks, num_tasks=num_tasks)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        active = [check_hyperparameters(width, num_tasks, beta) for width in self.channels]
        self.beta = float(beta)
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        for block, (width, n_act) in enumerate(zip(self.channels, active)):
            table = random_table_bool(width, num_tasks, n_act, generator)
            self.register_buffer(f"table_{block}", table, persistent=False)

    def table_bool(self, block: int) -> torch.Tensor:
        return getattr(self, f"table_{block}")

    def options(self) -> dict[str, Any]:
        return {"beta": self.beta, "seed": self.seed}
