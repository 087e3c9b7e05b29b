"""Uncertainty weighting (Kendall et al., CVPR 2018) in ANT's form, with learned log-variances."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .base import Balancer
from .registry import register_balancer


def uw_loss(cluster_losses: Tensor, log_vars: Tensor) -> Tensor:
    """ANT's UW objective ``sum_i 0.5 * (exp(-s_i) * L_i / K + s_i)``; minimised in s at s_i = log(L_i / K)."""
    if cluster_losses.shape != log_vars.shape or cluster_losses.dim() != 1:
        raise ValueError(
            f"cluster_losses and log_vars must both be (K,), got {tuple(cluster_losses.shape)} "
            f"and {tuple(log_vars.shape)}"
        )
    k = cluster_losses.shape[0]
    return 0.5 * (torch.exp(-log_vars) * cluster_losses / k + log_vars).sum()


@register_balancer("uw")
class UncertaintyWeighting(Balancer):
    """UW: backward of :func:`uw_loss` into the params and the log-variances s (start at 0).

    :meth:`neutral_start` (warm starts) sets s = -log 2, where the update is linear weighting's.
    s is trained by the caller's optimiser in its own group (:meth:`parameter_groups`: ``lr``
    0.025, ``weight_decay`` 0 by default). Logged weight: 0.5 * exp(-s_i). Cost: one ordinary
    backward. Several processes: the s-gradient is linear in L_i, so averaging all gradients
    (which the balancer does) equals the union batch.
    """

    def __init__(
        self, k: int, lr: float = 0.025, weight_decay: float = 0.0, max_grad_norm: float | None = None
    ) -> None:
        super().__init__(k, max_grad_norm)
        self.lr = lr
        self.weight_decay = weight_decay
        self.log_vars = nn.Parameter(torch.zeros(k))

    def _options(self) -> dict:
        return {**super()._options(), "lr": self.lr, "weight_decay": self.weight_decay}

    def parameter_groups(self) -> list[dict]:
        return [{"params": [self.log_vars], "lr": self.lr, "weight_decay": self.weight_decay}]

    def neutral_start(self) -> None:
        """s_i = -log 2: the weights 0.5 * exp(-s_i) / K on L_i become 1/K, linear weighting's."""
        with torch.no_grad():
            self.log_vars.fill_(-math.log(2.0))

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
        if any(p is self.log_vars for p in params):
            raise ValueError("pass only the network's parameters; the balancer adds its own log-variances")
        log_vars = self.log_vars.to(cluster_losses.dtype)
        logs = self._write_grads(uw_loss(cluster_losses, log_vars), [*params, self.log_vars], scaler, clip)
        logs["weights"] = 0.5 * torch.exp(-self.log_vars.detach())
        return logs
