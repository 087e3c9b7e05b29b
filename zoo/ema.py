"""Exponential moving average of a network's weights, the copy DiT samples and publishes.

`ema <- decay * ema + (1 - decay) * online` after every optimiser step, starting from an exact copy
at step 0 (DiT's recipe, decay 0.9999). Buffers are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """An EMA shadow of `module`, updated in place with `update(module)`.

    The shadow is a frozen deep copy, or `shadow` when given (e.g. the net inside a copy of the
    whole model, so that copy samples and saves with the averaged weights).
    """

    def __init__(self, module: nn.Module, decay: float = 0.9999, shadow: nn.Module | None = None) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        if shadow is None:
            shadow = copy.deepcopy(module)
        else:
            shadow.load_state_dict(module.state_dict())
        self.module = shadow.eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move every floating-point parameter towards `module`'s; copy its buffers."""
        shadow = dict(self.module.named_parameters())
        pairs = [(shadow[name], param) for name, param in module.named_parameters()]
        floating = [(s, p) for s, p in pairs if s.is_floating_point()]
        if floating:
            targets = [s for s, _ in floating]
            sources = [p.detach().to(s.dtype) for s, p in floating]
            torch._foreach_lerp_(targets, sources, 1.0 - self.decay)
        for shadow_buffer, buffer in zip(self.module.buffers(), module.buffers()):
            shadow_buffer.copy_(buffer)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights (the keys of the wrapped module's state dict)."""
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state_dict)
