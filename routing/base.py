"""The router interface a backbone talks to: ``mask(t, block)`` gives each sample's channel mask for a block.

A router is an ``nn.Module`` holding its tables as non-persistent bool buffers: they follow the model
across devices with ``.to(...)`` but never enter a state dict (they are rebuilt from ``config()``), so a
routed model's checkpoint has exactly the keys and sizes of the unrouted one.

``strength`` (default 1) scales how far the masks close: ``mask = 1 - strength * (1 - table)``, so
strength 0 gives all-ones masks (the plain network, exactly) and strength 1 the router's table. A
warm start from plain weights raises it from 0 to 1 over its first steps (:func:`warmup_strength`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def normalize_channels(channels: int | Sequence[int], num_blocks: int) -> list[int]:
    """Per-block widths from an int (every block that width) or a list with one width per block."""
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"num_blocks must be an integer >= 1, got {num_blocks!r}")
    if isinstance(channels, int) and not isinstance(channels, bool):
        widths = [channels] * num_blocks
    elif isinstance(channels, Sequence) and not isinstance(channels, str):
        widths = list(channels)
        if len(widths) != num_blocks:
            raise ValueError(
                f"channels lists one width per block: expected {num_blocks} widths (num_blocks), "
                f"got {len(widths)}"
            )
    else:
        raise ValueError(f"channels must be an int or a list of per-block ints, got {channels!r}")
    for width in widths:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"every channel width must be an integer >= 1, got {width!r} in {channels!r}")
    return widths


class Router(nn.Module, ABC):
    """Base class of routers: subclasses provide one bool (T, C_block) table per block via ``table_bool``.

    ``name`` is set by :func:`routing.register_router`; ``options()`` returns the kind-specific
    hyperparameters so that ``routing.build(**router.config())`` rebuilds an identical router.
    """

    name: str = ""

    def __init__(self, channels: int | Sequence[int], num_blocks: int = 1, num_tasks: int = 1000) -> None:
        super().__init__()
        self.channels: list[int] = normalize_channels(channels, num_blocks)
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be an integer >= 1, got {num_tasks!r}")
        self.num_tasks = num_tasks
        # The last timestep tensor that passed validation, with its in-place version counter: a
        # backbone asks for the masks of one `t` once per block, and checking its range needs a
        # device sync on GPU, so it is checked once per forward.
        self._checked_t: torch.Tensor | None = None
        self._checked_version = -1
        self.strength = 1.0

    def set_strength(self, strength: float) -> None:
        """How far the masks close, in [0, 1]: inactive channels are scaled by ``1 - strength``.

        0 gives all-ones masks (every channel active: the unrouted network), 1 the router's table
        (the default). ``table()`` is always the target table; ``mask()`` applies the strength.
        """
        if (
            isinstance(strength, bool)
            or not isinstance(strength, (int, float))
            or not math.isfinite(strength)
            or not 0.0 <= strength <= 1.0
        ):
            raise ValueError(f"strength must be a number in [0, 1], got {strength!r}")
        self.strength = float(strength)

    @property
    def num_blocks(self) -> int:
        """Number of blocks this router serves."""
        return len(self.channels)

    @abstractmethod
    def table_bool(self, block: int) -> torch.Tensor:
        """The bool (T, C_block) table of a block (a buffer on the router's device)."""

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """Kind-specific hyperparameters for ``config()`` (JSON-serialisable)."""

    def _check_block(self, block: int) -> None:
        if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block < self.num_blocks:
            raise ValueError(f"block must be an integer in [0, {self.num_blocks}), got {block!r}")

    def _check_timesteps(self, t: torch.Tensor) -> None:
        if t is self._checked_t and t._version == self._checked_version:
            return
        if not isinstance(t, torch.Tensor) or t.dim() != 1:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"t must be a 1-D LongTensor of timesteps (B,), got {shape}")
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise ValueError(f"t must hold integer timestep indices (torch.long), got dtype {t.dtype}")
        if t.numel():
            low, high = (int(value) for value in torch.stack(torch.aminmax(t)).tolist())
            if low < 0 or high >= self.num_tasks:
                raise ValueError(
                    f"t must lie in [0, {self.num_tasks}) (original timestep indices), got values in [{low}, {high}]"
                )
        # Inference tensors have no version counter, so an in-place change could not be seen: no cache.
        if not t.is_inference():
            self._checked_t = t
            self._checked_version = t._version

    def table(self, block: int = 0) -> torch.Tensor:
        """The float32 (T, C_block) 0/1 table of a block, e.g. for plotting or comparing with a checkpoint."""
        self._check_block(block)
        return self.table_bool(block).to(torch.float32)

    def mask(
        self,
        t: torch.Tensor,
        block: int = 0,
        dtype: torch.dtype | None = None,
        check_timesteps: bool = True,
    ) -> torch.Tensor:
        """Channel masks (B, C_block) of 0/1 for timesteps ``t`` (B,) in block ``block``.

        ``t`` holds ORIGINAL timestep indices in [0, num_tasks) (respaced samplers must pass those).
        ``dtype`` defaults to the default float dtype; pass the activations' dtype under reduced precision.
        Below ``strength`` 1 the inactive channels are ``1 - strength`` instead of 0 (active ones stay 1).
        ``check_timesteps=False`` skips the range check of ``t`` (a device sync), for a caller that
        validated these timesteps itself.
        """
        self._check_block(block)
        if check_timesteps:
            self._check_timesteps(t)
        table = self.table_bool(block)
        rows = table.index_select(0, t.to(device=table.device, dtype=torch.long))
        dtype = dtype or torch.get_default_dtype()
        if self.strength == 1.0:
            return rows.to(dtype)
        if self.strength == 0.0:
            return torch.ones(rows.shape, dtype=dtype, device=rows.device)
        # 1 - s * (1 - m): 1 where m = 1, 1 - s where m = 0 (computed in float32, then cast)
        closed = (~rows).to(torch.float32).mul_(self.strength)
        return torch.sub(1.0, closed).to(dtype)

    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings; ``routing.build(**router.config())`` rebuilds this router."""
        widths = self.channels
        channels: int | list[int] = widths[0] if len(set(widths)) == 1 else list(widths)
        config = {
            "name": self.name,
            "channels": channels,
            "num_blocks": self.num_blocks,
            "num_tasks": self.num_tasks,
            **self.options(),
        }
        if self.strength != 1.0:  # only mid warm-up; a finished router's config is unchanged
            config["strength"] = self.strength
        return config

    def extra_repr(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.options().items())
        widths = sorted(set(self.channels))
        strength = "" if self.strength == 1.0 else f", strength={self.strength!r}"
        return f"channels={widths}, num_blocks={self.num_blocks}, num_tasks={self.num_tasks}, {options}{strength}"


def warmup_strength(step: int, warmup_steps: int) -> float:
    """Mask strength after ``step`` optimiser steps of a linear warm-up over ``warmup_steps`` steps.

    0 at step 0 (all-ones masks), ``step / warmup_steps`` in between and exactly 1 (the router's table)
    from step ``warmup_steps`` on; ``warmup_steps`` 0 means no warm-up (always 1).
    """
    for name, value in (("step", step), ("warmup_steps", warmup_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if warmup_steps == 0 or step >= warmup_steps:
        return 1.0
    return step / warmup_steps
