"""FAMO (Liu et al., NeurIPS 2023): O(1)-cost balancing that equalises the cluster losses' log-decrease."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .base import Balancer, all_reduce_mean_
from .registry import register_balancer


@register_balancer("famo")
class FAMO(Balancer):
    """FAMO over cluster losses.

    Logits w (K,) start at 0, z = softmax(w). :meth:`backward` back-propagates
    ``c * sum_i z_i log(L_i - b_i + eps)`` with ``c = 1 / sum_i z_i / (L_i - b_i + eps)`` detached,
    i.e. ``sum_i c_i L_i`` with ``c_i = c z_i / (L_i - b_i + eps)`` (these sum to 1 and are logged).
    After the optimiser step, :meth:`after_step` takes the cluster losses re-evaluated on the SAME
    batch without grad, ``delta_i = log(L_i - b_i + eps) - log(L_i' - b_i + eps)``, and makes one Adam
    step (``lr`` 0.025, L2 ``weight_decay`` 1e-3) on w with gradient ``z * (delta - <z, delta>)``.
    Logits, Adam moments and the pending losses live in buffers (checkpointed). :meth:`neutral_start`
    (warm starts) makes the next update linear weighting's.
    Cost: one ordinary backward plus one no-grad forward for the re-evaluation. Several processes:
    the cluster losses are averaged across processes before c_i and delta are computed (exact for
    the union batch with equal per-cluster counts), gradients averaged by the balancer.
    """

    needs_after_step = True

    def __init__(
        self,
        k: int,
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        eps: float = 1e-8,
        min_losses: Sequence[float] | None = None,
        betas: Sequence[float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(k, max_grad_norm)
        if min_losses is not None and len(min_losses) != k:
            raise ValueError(f"min_losses must hold {k} values, got {len(min_losses)}")
        self.lr, self.weight_decay, self.eps = lr, weight_decay, eps
        self.betas, self.adam_eps = (float(betas[0]), float(betas[1])), adam_eps
        self.register_buffer("min_losses", torch.tensor(list(min_losses or [0.0] * k), dtype=torch.float64))
        self.register_buffer("logits", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("exp_avg", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("exp_avg_sq", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("adam_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("pending_losses", torch.full((k,), float("nan"), dtype=torch.float64))

    def _options(self) -> dict:
        return {
            **super()._options(),
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "eps": self.eps,
            "min_losses": self.min_losses.tolist(),
            "betas": list(self.betas),
            "adam_eps": self.adam_eps,
        }

    def _global(self, cluster_losses: Tensor) -> Tensor:
        return all_reduce_mean_(cluster_losses.detach().to(torch.float64).clone())

    def neutral_start(self) -> None:
        """Set the logits from the next backward's losses, ``w_i = log(L_i - b_i + eps)`` (centred): z_i is
        then proportional to ``L_i - b_i + eps``, so that update's coefficients are exactly 1/K (linear
        weighting); FAMO's Adam state is reset and its logit updates continue from there."""
        self.logits.fill_(float("nan"))  # marks "initialise from the next losses" (checkpointed)
        self.exp_avg.zero_()
        self.exp_avg_sq.zero_()
        self.adam_step.zero_()

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
        losses = self._global(cluster_losses)
        if torch.isnan(self.logits).all():  # after neutral_start
            start = torch.log(losses - self.min_losses + self.eps)
            self.logits.copy_(start - start.mean())  # centred: softmax ignores the shift, the decay does not
        z = torch.softmax(self.logits, 0)
        inverse = z / (losses - self.min_losses + self.eps)
        coefficients = inverse / inverse.sum()
        logs = self._write_grads(
            (coefficients.to(cluster_losses.dtype) * cluster_losses).sum(), params, scaler, clip
        )
        self.pending_losses.copy_(losses)
        logs["weights"] = coefficients
        logs["z"] = z
        return logs

    def after_step(self, reevaluated_cluster_losses: Tensor) -> dict:
        """Update the logits from the losses re-evaluated on the same batch after the optimiser step."""
        self._check_losses(reevaluated_cluster_losses)
        if torch.isnan(self.pending_losses).any():
            raise RuntimeError("after_step needs a preceding backward on the same batch")
        new = self._global(reevaluated_cluster_losses)
        delta = torch.log(self.pending_losses - self.min_losses + self.eps) - torch.log(
            new - self.min_losses + self.eps
        )
        z = torch.softmax(self.logits, 0)
        gradient = z * (delta - z @ delta) + self.weight_decay * self.logits
        self.adam_step += 1
        step = int(self.adam_step)
        beta1, beta2 = self.betas
        self.exp_avg.mul_(beta1).add_(gradient, alpha=1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
        denominator = (self.exp_avg_sq / (1 - beta2**step)).sqrt().add_(self.adam_eps)
        self.logits.addcdiv_(self.exp_avg, denominator, value=-self.lr / (1 - beta1**step))
        self.pending_losses.fill_(float("nan"))
        return {"delta": delta, "z": torch.softmax(self.logits, 0)}
