"""Exponential moving average of a network's weights, the copy DiT samples and publishes.

`ema <- decay_k * ema + (1 - decay_k) * online` after optimiser step k, starting from an exact copy.
The update is timm's `ModelEmaV3` (foreach lerp of the parameters, buffers copied), with its decay
warm-up: `decay_k = min(decay, 1 - (1 + k / gamma) ** -power)` (0 at the first step, so the EMA starts
as the online weights, and approaching `decay` only as the run grows: with power 2/3 it is 0.994 at
2,000 steps, 0.999 at 31.6K and 0.9999 at 1M). Without warm-up (`warmup_power=0`) the decay is the
constant `decay` (DiT's recipe, 0.9999), which after 2,000 steps still holds ~82 % of the initial
weights: a short run's EMA is noise.

The shadow may be given (e.g. the net inside a copy of the whole model, so that copy samples and saves
with the averaged weights); it is updated in place and never deep-copied again. Under FSDP the shadow is
sharded like the online net and each rank averages its own shards (the pairs are DTensor shards).
"""

from __future__ import annotations

import copy

import torch
from timm.utils.model_ema import ModelEmaV3
from torch import nn


class EMA(ModelEmaV3):
    """An EMA shadow of `module`, updated in place with `update(module, step=k)` (k = optimiser steps so far).

    `step=None` uses the constant `decay`. `warmup_power > 0` turns on the warm-up above (timm's
    `use_warmup`, `warmup_gamma`, `warmup_power`).
    """

    def __init__(
        self,
        module: nn.Module,
        decay: float = 0.9999,
        shadow: nn.Module | None = None,
        warmup_power: float = 0.0,
        warmup_gamma: float = 1.0,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if not warmup_power >= 0.0 or not warmup_gamma > 0.0:
            raise ValueError(
                f"EMA warm-up needs power >= 0 and gamma > 0, got power={warmup_power}, gamma={warmup_gamma}"
            )
        # timm deep-copies the module it is given: give it a one-parameter placeholder, then the shadow
        placeholder = nn.Linear(1, 1, bias=False).to(next(module.parameters()).device)
        super().__init__(
            placeholder,
            decay=decay,
            use_warmup=warmup_power > 0,
            warmup_power=warmup_power if warmup_power > 0 else 2 / 3,
            warmup_gamma=warmup_gamma,
            exclude_buffers=True,  # parameters averaged, buffers copied
        )
        if shadow is None:
            shadow = copy.deepcopy(module)
        else:
            shadow.load_state_dict(module.state_dict())
        self.module = shadow.eval().requires_grad_(False)
        if hasattr(self, "_sr_generator"):  # timm's private generator for bf16 stochastic rounding
            self._sr_generator = torch.Generator(device=next(shadow.parameters()).device)
            self._sr_generator.manual_seed(self.stochastic_rounding_seed)

    def current_decay(self, step: int | None) -> float:
        """The decay used by `update(module, step)`."""
        return self.get_decay(step)

    def state_dict(self, *args, **kwargs):  # noqa: D401 - the averaged weights, keyed like the module
        """The averaged weights (the keys of the wrapped module's state dict)."""
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, *args, **kwargs):
        return self.module.load_state_dict(state_dict, *args, **kwargs)
