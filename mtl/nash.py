"""Nash-MTL (Navon et al., ICML 2022) as used by ANT: weights solving G alpha = 1/alpha."""

from __future__ import annotations

import torch
from torch import Tensor

from .gram import GramBalancer
from .registry import register_balancer


def _objective(gram: Tensor, alpha: Tensor) -> Tensor:
    return 0.5 * alpha @ gram @ alpha - torch.log(alpha).sum()


def _newton(gram: Tensor, max_iter: int) -> tuple[Tensor, bool]:
    """Damped Newton on the strictly convex f(a) = 1/2 a^T G a - sum log a over a > 0.

    Its stationary point is G a = 1/a. Returns (a, converged); no minimiser exists (f unbounded
    below) exactly when the null space of G holds a non-negative direction, and then Newton does not
    converge.
    """
    diagonal = gram.diagonal().clamp_min(1e-300)
    alpha = diagonal.rsqrt()
    alpha = alpha * torch.sqrt(
        gram.shape[0] / (alpha @ gram @ alpha).clamp_min(1e-300)
    )  # best point on the ray
    for _ in range(max_iter):
        residual = alpha * (gram @ alpha) - 1.0
        if residual.abs().max() < 1e-13:
            return alpha, True
        gradient = gram @ alpha - 1.0 / alpha
        hessian = gram + torch.diag(1.0 / alpha**2)
        step, info = torch.linalg.solve_ex(hessian, gradient)
        if info != 0 or not torch.isfinite(step).all():  # diverging: f is unbounded below
            return alpha, False
        decrement = gradient @ step
        positive = step > 0
        size = 1.0
        if positive.any():  # stay strictly inside a > 0
            size = min(1.0, 0.99 * float((alpha[positive] / step[positive]).min()))
        value = _objective(gram, alpha)
        while size > 1e-12 and _objective(gram, alpha - size * step) > value - 0.25 * size * decrement:
            size *= 0.5
        alpha = alpha - size * step
    residual = alpha * (gram @ alpha) - 1.0
    return alpha, bool(residual.abs().max() < 1e-9)


def nash_weights(gram: Tensor, max_iter: int = 100) -> Tensor:
    """The Nash bargaining weights: alpha > 0 with ``G alpha = 1/alpha`` elementwise (float64).

    Solved by damped Newton on min 1/2 a^T G a - sum log a (no cvxpy). Tasks with a zero gradient
    (zero diagonal) get weight 0 and the rest is solved alone. If the remaining G admits no solution
    (a non-negative null direction, e.g. two exactly opposite gradients) a ridge ``r * mean(diag G) *
    I`` is added with r = 1e-12, 1e-9, ... 1e-3 until Newton converges. Scaling: G -> cG gives
    alpha / sqrt(c).
    """
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be a square (K, K) matrix, got shape {tuple(gram.shape)}")
    if not torch.isfinite(gram).all():
        raise ValueError("gram has non-finite entries")
    gram = gram.detach().to(torch.float64)
    gram = 0.5 * (gram + gram.T)
    k = gram.shape[0]
    diagonal = gram.diagonal()
    scale = float(diagonal.max()) if k else 0.0
    if scale <= 0:
        return torch.ones(k, dtype=torch.float64, device=gram.device)
    active = diagonal > 1e-14 * scale
    sub = gram[active][:, active]
    mean_diagonal = float(sub.diagonal().mean())
    for ridge in (0.0, 1e-12, 1e-9, 1e-6, 1e-3):
        solution, converged = _newton(
            sub + ridge * mean_diagonal * torch.eye(len(sub), dtype=sub.dtype, device=sub.device), max_iter
        )
        if converged:
            break
    alpha = torch.zeros(k, dtype=torch.float64, device=gram.device)
    alpha[active] = solution
    return alpha


@register_balancer("nash")
class NashMTL(GramBalancer):
    """Nash-MTL over cluster losses in ANT's form: loss ``sum_i alpha_i L_i / K``.

    alpha = nash_weights(G / ||G||_F) (the Frobenius normalisation of Nash-MTL makes alpha free of
    the gradient scale; the 1/K and the clip set the step size), recomputed every ``update_every``
    steps (default 25, as ANT) and held in between; ``.grad`` norm clipped to ``max_grad_norm``
    (default 1.0) after it is written. Cost: update steps one forward + about one backward
    (the update is built from the Gram pass: ``keep``, see :class:`GramBalancer`), other steps one
    ordinary backward. Several processes: per-layer
    cluster gradients are averaged across processes before the Gram products, so alpha is that of
    the union batch on every process.
    """

    def __init__(
        self,
        k: int,
        update_every: int = 25,
        max_grad_norm: float | None = 1.0,
        engine: str = "hooks",
        keep: str = "auto",
    ) -> None:
        super().__init__(k, update_every=update_every, max_grad_norm=max_grad_norm, engine=engine, keep=keep)

    def coefficients(self, gram: Tensor) -> tuple[Tensor, dict]:
        norm = torch.linalg.matrix_norm(gram)
        alpha = nash_weights(gram / norm) if norm > 0 else torch.ones(self.k, dtype=torch.float64)
        return alpha.to(gram.device) / self.k, {"alpha": alpha}
