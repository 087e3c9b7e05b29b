"""Linear balancing: the mean of the cluster losses (K = 1 is plain training)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from .base import Balancer
from .registry import register_balancer


@register_balancer("linear")
class Linear(Balancer):
    """Backward of ``mean_k L_k``. Cost: one ordinary backward. Several processes: gradients averaged."""

    def backward(
        self,
        cluster_losses: Tensor,
        params: Iterable[Tensor],
        scaler: Any | None = None,
        capture: Any = None,
        clip: bool = True,
    ) -> dict:
        self._check_losses(cluster_losses)
        params = self._check_params(params)
        logs = self._write_grads(cluster_losses.mean(), params, scaler, clip)
        logs["weights"] = torch.full((self.k,), 1.0 / self.k)
        return logs
