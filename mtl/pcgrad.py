"""PCGrad (Yu et al., NeurIPS 2020): project away conflicting components, on the ORIGINAL gradients."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .gram import GramBalancer
from .registry import register_balancer


def random_orders(k: int, generator: torch.Generator | None = None) -> list[Tensor]:
    """K random visiting orders, one permutation of range(K) per task."""
    return [torch.randperm(k, generator=generator) for _ in range(k)]


def _check_orders(orders: Sequence[Sequence[int] | Tensor], k: int) -> list[list[int]]:
    checked = [[int(j) for j in order] for order in orders]
    if len(checked) != k or any(sorted(order) != list(range(k)) for order in checked):
        raise ValueError(f"orders must be {k} permutations of range({k})")
    return checked


def pcgrad(
    grads: Tensor,
    orders: Sequence[Sequence[int] | Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """PCGrad by explicit projections: ``sum_i g_i'`` for grads (K, P).

    For each task i, visit every task j in ``orders[i]`` (i included) and, whenever
    ``<g_i', g_j> < 0``, set ``g_i' -= <g_i', g_j> / |g_j|^2 * g_j`` with the original g_j. Random
    orders come from ``generator`` unless ``orders`` is given.
    """
    if grads.dim() != 2:
        raise ValueError(f"grads must be (K, P), got shape {tuple(grads.shape)}")
    k = grads.shape[0]
    orders = _check_orders(random_orders(k, generator) if orders is None else orders, k)
    squared = (grads * grads).sum(1)
    total = torch.zeros_like(grads[0])
    for i in range(k):
        projected = grads[i].clone()
        for j in orders[i]:
            inner = projected @ grads[j]
            if inner < 0:
                projected -= inner / squared[j] * grads[j]
        total += projected
    return total


def pcgrad_weights(
    gram: Tensor,
    orders: Sequence[Sequence[int] | Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Coefficients c (K,) with ``pcgrad(grads, orders) = sum_k c_k g_k``, from the Gram matrix alone.

    Each g_i' stays a combination ``sum_j w_j g_j`` of the original gradients, so
    ``<g_i', g_j> = (G w)_j`` and the projection onto g_j is ``w_j -= (G w)_j / G_jj``.
    """
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be a square (K, K) matrix, got shape {tuple(gram.shape)}")
    gram = gram.detach().to(torch.float64).cpu()
    k = gram.shape[0]
    orders = _check_orders(random_orders(k, generator) if orders is None else orders, k)
    total = torch.zeros(k, dtype=torch.float64)
    for i in range(k):
        weights = torch.zeros(k, dtype=torch.float64)
        weights[i] = 1.0
        for j in orders[i]:
            inner = gram[j] @ weights
            if inner < 0:
                weights[j] -= inner / gram[j, j]
        total += weights
    return total


@register_balancer("pcgrad")
class PCGrad(GramBalancer):
    """PCGrad over the K cluster gradients: update ``sum_i g_i'`` (a SUM: K times the mean's scale).

    The projected sum is ``sum_k c_k g_k`` with c from :func:`pcgrad_weights` (Gram matrix + random
    orders drawn from a generator seeded by ``seed``), so it costs one forward + about one
    backward (the update is built from the Gram pass: ``keep``, see :class:`GramBalancer`) instead
    of K backwards and K x P memory. Several processes: cluster gradients are
    averaged before the Gram products and every process draws the same orders (same seed).
    """

    def __init__(
        self,
        k: int,
        update_every: int = 1,
        max_grad_norm: float | None = None,
        engine: str = "hooks",
        keep: str = "auto",
        seed: int = 0,
    ) -> None:
        super().__init__(k, update_every=update_every, max_grad_norm=max_grad_norm, engine=engine, keep=keep)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def _options(self) -> dict:
        return {**super()._options(), "seed": self.seed}

    def coefficients(self, gram: Tensor) -> tuple[Tensor, dict]:
        return pcgrad_weights(gram, generator=self.generator).to(gram.device), {}
