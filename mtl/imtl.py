"""IMTL-G (Liu et al., ICLR 2021): the update whose projections on every unit task gradient are equal."""

from __future__ import annotations

import torch
from torch import Tensor

from .gram import GramBalancer
from .registry import register_balancer


def imtl_weights(gram: Tensor) -> Tensor:
    """IMTL-G weights from the Gram matrix: ``w = G^+ d / (1^T G^+ d)`` with ``d_i = |g_i|`` (float64).

    Then ``g = sum_i w_i g_i`` has ``<g, g_i / |g_i|> = (G w)_i / d_i`` equal for all i and sum(w) = 1
    (Gram form of the closed form of the paper; the pseudo-inverse covers linearly dependent
    gradients). If ``1^T G^+ d`` vanishes the weights fall back to the mean, 1/K each.
    """
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be a square (K, K) matrix, got shape {tuple(gram.shape)}")
    gram = gram.detach().to(torch.float64)
    gram = 0.5 * (gram + gram.T)
    norms = gram.diagonal().clamp_min(0).sqrt()
    direction = torch.linalg.pinv(gram, hermitian=True) @ norms
    total = direction.sum()
    if total.abs() <= 1e-12 * direction.abs().sum().clamp_min(1e-300):
        return torch.full_like(norms, 1.0 / len(norms))
    return direction / total


@register_balancer("imtl")
class IMTLG(GramBalancer):
    """IMTL-G over cluster losses: update ``sum_i w_i grad L_i`` with :func:`imtl_weights` (sum 1).

    Weights recomputed every ``update_every`` steps (default 1) from the Gram matrix. Cost: update
    steps one forward + about one backward (``keep``, see :class:`GramBalancer`), other steps one
    ordinary backward. Several processes:
    cluster gradients averaged before the Gram products (union-batch weights).
    """

    def __init__(
        self,
        k: int,
        update_every: int = 1,
        max_grad_norm: float | None = None,
        engine: str = "hooks",
        keep: str = "auto",
    ) -> None:
        super().__init__(k, update_every=update_every, max_grad_norm=max_grad_norm, engine=engine, keep=keep)

    def coefficients(self, gram: Tensor) -> tuple[Tensor, dict]:
        return imtl_weights(gram), {}
