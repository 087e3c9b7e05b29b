"""Per-sample loss weightings over the timestep, composable with any balancer.

Each weighting is defined on the epsilon-MSE and converted so that the effective objective is the
same whatever the network predicts: with x_t = a x0 + s eps (a^2 + s^2 = 1, SNR = a^2 / s^2),
``|x0 error|^2 = |eps error|^2 / SNR`` and ``|v error|^2 = |eps error|^2 (SNR + 1) / SNR``, so an
eps weight w becomes ``w * SNR`` for x0 and ``w * SNR / (SNR + 1)`` for v.

"velocity" is the flow-matching velocity u = x0 - eps of the linear interpolant x_t = t x0 + (1 - t) eps
(SiT; SNR = t^2 / (1 - t)^2): from x_t, a velocity error e implies the eps error -t e, so
``|u error|^2 = |eps error|^2 / t^2`` with ``t = sqrt(SNR) / (1 + sqrt(SNR))``, and an eps weight w becomes
``w * SNR / (1 + sqrt(SNR))^2`` (Min-SNR-gamma: ``min(SNR, gamma) / (1 + sqrt(SNR))^2``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .registry import register_weighting

PREDICTIONS = ("eps", "x0", "v", "velocity")


def _snr_of(t: Tensor, snr: Tensor) -> Tensor:
    if snr.dim() != 1:
        raise ValueError(f"snr must be the (T,) table of the schedule, got shape {tuple(snr.shape)}")
    return snr.to(device=t.device, dtype=torch.float64)[t.long()]


def _to_prediction(eps_weight: Tensor, snr: Tensor, prediction: str) -> Tensor:
    if prediction == "eps":
        return eps_weight
    if prediction == "x0":
        return eps_weight * snr
    if prediction == "v":
        return eps_weight * snr / (snr + 1)
    if prediction == "velocity":  # the linear interpolant's x0 - eps: the eps error is -t times its error
        return eps_weight * snr / (1 + snr.sqrt()) ** 2
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


class Weighting(nn.Module):
    """Base: ``weighting(per_sample_losses (B,), t (B,), snr (T,), prediction) -> (B,)``."""

    name: str = ""

    def eps_weight(self, snr: Tensor) -> Tensor:
        """The weight of the eps-MSE at the given SNR values (float64)."""
        raise NotImplementedError

    def forward(self, per_sample_losses: Tensor, t: Tensor, snr: Tensor, prediction: str = "eps") -> Tensor:
        if per_sample_losses.shape != t.shape:
            raise ValueError(
                f"per_sample_losses {tuple(per_sample_losses.shape)} and t {tuple(t.shape)} differ"
            )
        values = _snr_of(t, snr)
        weight = _to_prediction(self.eps_weight(values), values, prediction)
        return per_sample_losses * weight.to(per_sample_losses.dtype)

    def config(self) -> dict:
        """JSON-serialisable options; ``mtl.build_weighting(**config)`` rebuilds it."""
        return {"name": self.name}


@register_weighting("minsnr")
class MinSNR(Weighting):
    """Min-SNR-gamma (Hang et al., ICCV 2023): eps weight ``min(SNR, gamma) / SNR``.

    Equivalently x0 weight ``min(SNR, gamma)``, v weight ``min(SNR, gamma) / (SNR + 1)`` and flow-velocity
    weight ``min(SNR, gamma) / (1 + sqrt(SNR))^2``.
    """

    def __init__(self, gamma: float = 5.0) -> None:
        super().__init__()
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma!r}")
        self.gamma = gamma

    def eps_weight(self, snr: Tensor) -> Tensor:
        return torch.where(snr <= self.gamma, torch.ones_like(snr), self.gamma / snr)

    def config(self) -> dict:
        return {"name": self.name, "gamma": self.gamma}


@register_weighting("p2")
class P2(Weighting):
    """P2 weighting (Choi et al., CVPR 2022), stated for eps-prediction: eps weight ``1 / (k + SNR)^gamma``."""

    def __init__(self, k: float = 1.0, gamma: float = 1.0) -> None:
        super().__init__()
        if not k > 0 or gamma < 0:
            raise ValueError(f"p2 needs k > 0 and gamma >= 0, got k={k!r}, gamma={gamma!r}")
        self.k, self.gamma = k, gamma

    def eps_weight(self, snr: Tensor) -> Tensor:
        return (self.k + snr) ** (-self.gamma)

    def config(self) -> dict:
        return {"name": self.name, "k": self.k, "gamma": self.gamma}


@register_weighting("uwc")
class ContinuousUncertainty(Weighting):
    """Continuous uncertainty weighting: ``loss * exp(-u(t)) + u(t)`` with a learned log-variance u(t).

    u(t) is a linear layer on Fourier features ``cos(pi f t/T), sin(pi f t/T)``, f = 1..F, of the
    timestep (2F + 1 parameters, zero-initialised so training starts unweighted): the K -> T limit
    of UW, as EDM2's learned per-noise-level uncertainty. The learned weight absorbs the prediction
    type, which is accepted and not used.
    """

    def __init__(self, num_frequencies: int = 128) -> None:
        super().__init__()
        if num_frequencies < 1:
            raise ValueError(f"num_frequencies must be >= 1, got {num_frequencies!r}")
        self.num_frequencies = num_frequencies
        self.register_buffer(
            "frequencies",
            torch.arange(1, num_frequencies + 1, dtype=torch.float32) * math.pi,
            persistent=False,
        )
        self.linear = nn.Linear(2 * num_frequencies, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def log_variance(self, t: Tensor, num_timesteps: int) -> Tensor:
        """u(t) (B,) for timesteps t of a T-step schedule."""
        phase = (t.to(self.frequencies.dtype) / num_timesteps)[:, None] * self.frequencies
        return self.linear(torch.cat([phase.cos(), phase.sin()], dim=1)).squeeze(1)

    def forward(self, per_sample_losses: Tensor, t: Tensor, snr: Tensor, prediction: str = "eps") -> Tensor:
        if per_sample_losses.shape != t.shape:
            raise ValueError(
                f"per_sample_losses {tuple(per_sample_losses.shape)} and t {tuple(t.shape)} differ"
            )
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        u = self.log_variance(t, snr.shape[0]).to(per_sample_losses.dtype)
        return per_sample_losses * torch.exp(-u) + u

    def config(self) -> dict:
        return {"name": self.name, "num_frequencies": self.num_frequencies}
