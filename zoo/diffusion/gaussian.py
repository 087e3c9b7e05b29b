"""Gaussian diffusion: the discrete-time process DiT, DTR and ANT train and sample with.

Forward process q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) over T steps; the network
predicts the noise eps and, with learned sigma, a value v in [-1, 1] that interpolates the reverse
log-variance between log beta_t and the clipped log posterior variance (improved DDPM). Training uses
the hybrid loss: eps-MSE plus the variational bound with the predicted mean held fixed. Sampling is
DDPM ancestral or DDIM over a respaced subset of steps; the net always sees the ORIGINAL timestep
index, so anything keyed on the timestep (routing masks) stays that of training.

Schedules are float64 tables; they are cast to the working dtype and device when used.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from zoo.diffusion.registry import get_solver, register_process, register_solver, solvers_for
from zoo.validate import check_sampling_numbers

__all__ = [
    "GaussianDiffusion",
    "approx_standard_normal_cdf",
    "classifier_free_guidance",
    "discretized_gaussian_log_likelihood",
    "named_beta_schedule",
    "normal_kl",
    "space_timesteps",
]

SCHEDULES = ("linear", "cosine")
FIXED_VARIANCES = ("large", "small")
#: the normal CDF of the decoder NLL at t = 0: exact, or ADM's tanh approximation (the released code's)
NORMAL_CDFS = ("exact", "adm")

Net = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
#: what `GaussianDiffusion.sample` passes every solver; the solver's other keywords are its options
_SOLVER_ARGUMENTS = frozenset(
    (
        "process",
        "net",
        "shape",
        "steps",
        "eta",
        "y",
        "noise",
        "clip_denoised",
        "generator",
        "progress",
        "device",
        "dtype",
    )
)


def named_beta_schedule(schedule: str, num_timesteps: int) -> np.ndarray:
    """Betas (float64, shape (T,)) of the linear schedule of DDPM or the cosine schedule of improved DDPM.

    Linear: 1e-4 .. 0.02 scaled by 1000/T, so any T (> 20) traces about the same alpha_bar curve.
    Cosine: beta_i = min(1 - f((i+1)/T) / f(i/T), 0.999) with f(s) = cos((s + 0.008) / 1.008 * pi/2)^2.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    if int(num_timesteps) != num_timesteps or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be an integer >= 1, got {num_timesteps!r}")
    if schedule == "linear":
        if num_timesteps <= 20:
            raise ValueError(
                f"the linear schedule needs num_timesteps > 20 (beta_T = 20 / T < 1), got {num_timesteps}"
            )
        scale = 1000.0 / num_timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    alpha_bar = np.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.999)


def space_timesteps(num_timesteps: int, spec: str | int) -> list[int]:
    """The sorted step indices a respacing spec keeps out of `num_timesteps` steps.

    "N" or N: N steps spread evenly (fractional stride, Python's round-half-to-even) over all steps.
    "a,b,c": the steps are cut into equal sections (the first T % sections one step longer) and
    section i keeps its count spread evenly over it, as the ADM/DiT code does. "ddimN": the
    smallest integer stride s such that range(0, T, s) has exactly N steps.
    """
    text = str(spec).strip()
    if text.startswith("ddim"):
        desired = _parse_count(text[len("ddim") :], spec)
        for stride in range(1, num_timesteps + 1):
            if len(range(0, num_timesteps, stride)) == desired:
                return list(range(0, num_timesteps, stride))
        raise ValueError(
            f"respacing {spec!r}: no integer stride gives exactly {desired} of {num_timesteps} steps"
        )
    counts = [_parse_count(part, spec) for part in text.split(",")]
    if len(counts) > num_timesteps:
        raise ValueError(f"respacing {spec!r}: {len(counts)} sections but only {num_timesteps} steps")
    section_size, longer = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    start = 0
    for index, count in enumerate(counts):
        size = section_size + (1 if index < longer else 0)
        if count > size:
            raise ValueError(f"respacing {spec!r}: section {index} has {size} steps, cannot keep {count}")
        stride = 1.0 if count == 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return kept


def _parse_count(text: str, spec: str | int) -> int:
    try:
        count = int(text.strip())
    except ValueError:
        raise ValueError(
            f"cannot parse respacing {spec!r}; expected a step count like '250', a comma list like '10,20' "
            "or 'ddimN' like 'ddim50'"
        ) from None
    if count < 1:
        raise ValueError(f"respacing {spec!r}: step counts must be >= 1, got {count}")
    return count


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF that the ADM / DiT / ANT / DTR code uses:
    0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (absolute error < 2e-4)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, normal_cdf: str = "exact"
) -> torch.Tensor:
    """Elementwise log-probability of data in [-1, 1] quantised to 256 bins under N(mean, exp(log_scale)^2).

    Each value owns the bin x +- 1/255; the two edge bins extend to -inf and +inf.
    `normal_cdf="exact"` uses the exact normal CDF, each bin mass taken on the tail where it does not
    cancel and through log Phi (accurate far into the tails). `normal_cdf="adm"` computes it as the released ADM / DiT code does: the tanh
    approximation `approx_standard_normal_cdf`, Phi(u) - Phi(l) directly, and the edge-bin masses floored
    at 1e-12 like the middle one. Both floor the middle-bin probability at 1e-12, as ADM does.
    """
    if normal_cdf not in NORMAL_CDFS:
        raise ValueError(f"unknown normal_cdf {normal_cdf!r}; expected one of {NORMAL_CDFS}")
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (centered + 1.0 / 255.0)
    lower = inv_std * (centered - 1.0 / 255.0)
    if normal_cdf == "adm":
        cdf_upper = approx_standard_normal_cdf(upper)
        cdf_lower = approx_standard_normal_cdf(lower)
        log_low_edge = torch.log(cdf_upper.clamp(min=1e-12))
        log_high_edge = torch.log((1.0 - cdf_lower).clamp(min=1e-12))
        log_mid = torch.log((cdf_upper - cdf_lower).clamp(min=1e-12))
        return torch.where(x < -0.999, log_low_edge, torch.where(x > 0.999, log_high_edge, log_mid))
    # log(Phi(u) - Phi(l)) on the tail where it does not cancel (Phi(-l) - Phi(-u) when l > 0), from
    # log Phi, which stays accurate far into the tails: log Phi(hi) + log(1 - exp(log Phi(lo) - log Phi(hi))).
    positive = lower > 0
    hi = torch.where(positive, -lower, upper)
    lo = torch.where(positive, -upper, lower)
    log_hi = torch.special.log_ndtr(hi)
    log_mass = log_hi + torch.log(-torch.expm1(torch.special.log_ndtr(lo) - log_hi))
    log_mid = log_mass.clamp(min=math.log(1e-12))
    return torch.where(
        x < -0.999,
        torch.special.log_ndtr(upper),
        torch.where(x > 0.999, torch.special.log_ndtr(-lower), log_mid),
    )


def _mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.mean(dim=tuple(range(1, tensor.ndim)))


def classifier_free_guidance(net: Net, scale: float, channels: int | None = None) -> Net:
    """Wrap `net` so one forward on [x, x] with labels [y, null] returns the guided output.

    eps = eps_u + scale * (eps_c - eps_u) on the first `channels` eps channels (all of them when
    None; 3 reproduces the original DiT sampling script); every other channel, the learned-variance
    half included, is the conditional output. The null label is `net.num_classes`.
    """
    num_classes = getattr(net, "num_classes", None)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"classifier-free guidance needs a class-conditional net with an int attribute num_classes >= 1 "
            f"(the null label); got num_classes={num_classes!r}"
        )
    if channels is not None and channels < 1:
        raise ValueError(f"guidance_channels must be None or >= 1, got {channels}")

    def guided(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y is None:
            raise ValueError("classifier-free guidance needs class labels y; got y=None")
        eps_channels = x.shape[1]
        guided_channels = eps_channels if channels is None else channels
        if guided_channels > eps_channels:
            raise ValueError(f"guidance_channels={channels} exceeds the {eps_channels} eps channels")
        null = torch.full_like(y, num_classes)
        output = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        conditional, unconditional = output.chunk(2)
        mixed = unconditional[:, :guided_channels] + scale * (
            conditional[:, :guided_channels] - unconditional[:, :guided_channels]
        )
        return torch.cat([mixed, conditional[:, guided_channels:]], dim=1)

    return guided


@register_process("ddpm")
class GaussianDiffusion:
    """A discrete Gaussian diffusion process with eps prediction and optional learned variance.

    `betas` (float64, length `num_timesteps`) overrides the named schedule; `timestep_map` holds, for
    each step of this process, the ORIGINAL timestep index passed to the net (arange unless respaced).
    Without learned sigma the reverse variance is fixed: "large" = beta_t (with the posterior
    variance at t=0), as DiT does by default, or "small" = the clipped posterior variance.
    `normal_cdf` picks the CDF of the decoder NLL at t = 0 (`discretized_gaussian_log_likelihood`):
    "exact" or "adm", the tanh approximation of the released ADM / DiT code (the recipes use "adm").
    """

    prediction = "eps"

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> GaussianDiffusion:
        """The process of a config's `diffusion` section (configs before `normal_cdf` existed: exact)."""
        return cls(
            schedule=section["schedule"],
            num_timesteps=section["num_timesteps"],
            learn_sigma=section["learn_sigma"],
            normal_cdf=section.get("normal_cdf", "exact"),
        )

    def __init__(
        self,
        schedule: str = "linear",
        num_timesteps: int = 1000,
        learn_sigma: bool = True,
        betas: Sequence[float] | np.ndarray | torch.Tensor | None = None,
        timestep_map: Sequence[int] | torch.Tensor | None = None,
        fixed_variance: str = "large",
        normal_cdf: str = "exact",
    ) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
        if int(num_timesteps) != num_timesteps or num_timesteps < 1:
            raise ValueError(f"num_timesteps must be an integer >= 1, got {num_timesteps!r}")
        if fixed_variance not in FIXED_VARIANCES:
            raise ValueError(f"unknown fixed_variance {fixed_variance!r}; expected one of {FIXED_VARIANCES}")
        if normal_cdf not in NORMAL_CDFS:
            raise ValueError(f"unknown normal_cdf {normal_cdf!r}; expected one of {NORMAL_CDFS}")
        self.normal_cdf = normal_cdf
        # The tables are plain CPU float64 tensors (not module state), cast when used: built on the CPU
        # even inside `with torch.device("meta")` (deferred initialisation of the model around them).
        with torch.device("cpu"):
            self._build_tables(schedule, num_timesteps, learn_sigma, betas, timestep_map, fixed_variance)

    def _build_tables(
        self, schedule, num_timesteps, learn_sigma, betas, timestep_map, fixed_variance
    ) -> None:
        self.schedule = schedule
        self.num_timesteps = int(num_timesteps)
        self.learn_sigma = bool(learn_sigma)
        self.fixed_variance = fixed_variance
        self._explicit_betas = betas is not None
        self._explicit_map = timestep_map is not None

        if betas is None:
            betas = named_beta_schedule(schedule, self.num_timesteps)
        betas = torch.as_tensor(np.asarray(betas, dtype=np.float64))
        if betas.shape != (self.num_timesteps,):
            raise ValueError(f"betas must have shape ({self.num_timesteps},), got {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(
                f"betas must lie in (0, 1), got values in [{betas.min():.3g}, {betas.max():.3g}]"
            )
        if timestep_map is None:
            timestep_map = torch.arange(self.num_timesteps)
        timestep_map = torch.as_tensor(timestep_map, dtype=torch.long)
        if timestep_map.shape != (self.num_timesteps,):
            raise ValueError(
                f"timestep_map must have shape ({self.num_timesteps},), got {tuple(timestep_map.shape)}"
            )
        if bool((timestep_map < 0).any()) or bool((timestep_map[1:] <= timestep_map[:-1]).any()):
            raise ValueError("timestep_map must be strictly increasing non-negative original indices")
        self.betas = betas
        self.timestep_map = timestep_map

        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = self.alphas_cumprod.rsqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        self.snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)

        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at t=0; its log is clipped to the value at t=1 (to beta_0 when T=1).
        floor = self.posterior_variance[1:2] if self.num_timesteps > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.log(torch.cat([floor, self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)
        )
        self.log_betas = torch.log(betas)
        if fixed_variance == "large":
            self.fixed_log_variance = torch.log(torch.cat([floor, betas[1:]]))
        else:
            self.fixed_log_variance = self.posterior_log_variance_clipped
        self._tables: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    def __repr__(self) -> str:
        respaced = (
            f", original steps {int(self.timestep_map[0])}..{int(self.timestep_map[-1])}"
            if self._explicit_map
            else ""
        )
        return (
            f"GaussianDiffusion(schedule={self.schedule!r}, num_timesteps={self.num_timesteps}, "
            f"learn_sigma={self.learn_sigma}{respaced})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings; `GaussianDiffusion(**d)` rebuilds the same process."""
        config: dict[str, Any] = {
            "schedule": self.schedule,
            "num_timesteps": self.num_timesteps,
            "learn_sigma": self.learn_sigma,
            "fixed_variance": self.fixed_variance,
        }
        if self.normal_cdf != "exact":
            config["normal_cdf"] = self.normal_cdf
        if self._explicit_betas:
            config["betas"] = self.betas.tolist()
        if self._explicit_map:
            config["timestep_map"] = self.timestep_map.tolist()
        return config

    # ----------------------------------------------------------------------------- tables and checks

    def _coefficient(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Table `name` at steps t, in like's dtype and device, shaped to broadcast over like."""
        key = (name, like.device, like.dtype)
        table = self._tables.get(key)
        if table is None:
            table = getattr(self, name).to(device=like.device, dtype=like.dtype)
            self._tables[key] = table
        return table[t].reshape(-1, *([1] * (like.ndim - 1)))

    def _original_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The original timestep indices of steps t, the ones the net is trained on."""
        key = ("timestep_map", t.device, torch.long)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = self.timestep_map.to(t.device)
        return table[t]

    def _check_timesteps(self, t: torch.Tensor, batch: int) -> None:
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"t must be an integer (long) tensor of shape ({batch},), got {t!r:.80}")
        if t.shape != (batch,):
            raise ValueError(f"t must have shape ({batch},), got {tuple(t.shape)}")
        low, high = int(t.min()), int(t.max())
        if low < 0 or high >= self.num_timesteps:
            raise ValueError(
                f"timesteps must lie in [0, {self.num_timesteps}), got values in [{low}, {high}]"
            )

    def _split_output(
        self, output: torch.Tensor, x_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(eps, variance value or None) from a net output, checking its shape."""
        channels = x_t.shape[1]
        expected = (x_t.shape[0], 2 * channels if self.learn_sigma else channels, *x_t.shape[2:])
        if tuple(output.shape) != expected:
            raise ValueError(
                f"net output must have shape {expected} (learn_sigma={self.learn_sigma}: "
                f"{'eps then variance value' if self.learn_sigma else 'eps only'}), got {tuple(output.shape)}"
            )
        if self.learn_sigma:
            return output[:, :channels], output[:, channels:]
        return output, None

    # ----------------------------------------------------------------------------- forward process

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise."""
        self._check_timesteps(t, x0.shape[0])
        if noise is None:
            noise = torch.randn_like(x0)
        return self._q_sample(x0, t, noise)

    def _q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
        return (
            self._coefficient("sqrt_alphas_cumprod", t, x0) * x0
            + self._coefficient("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0)."""
        if x0.shape != x_t.shape:
            raise ValueError(
                f"x0 and x_t must have the same shape, got {tuple(x0.shape)} and {tuple(x_t.shape)}"
            )
        self._check_timesteps(t, x_t.shape[0])
        return self._posterior(x0, x_t, t)

    def _posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean = (
            self._coefficient("posterior_mean_coef1", t, x_t) * x0
            + self._coefficient("posterior_mean_coef2", t, x_t) * x_t
        )
        variance = self._coefficient("posterior_variance", t, x_t).expand_as(x_t)
        log_variance = self._coefficient("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return mean, variance, log_variance

    # ----------------------------------------------------------------------------- reverse process

    def p_mean_variance(
        self,
        net: Net,
        x_t: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        clip_denoised: bool = False,
    ) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t): dict of mean, variance, log_variance, pred_x0 and eps.

        The net is called with the original timestep indices `timestep_map[t]`.
        """
        self._check_timesteps(t, x_t.shape[0])
        return self._p_mean_variance(net, x_t, t, y, clip_denoised)

    def _p_mean_variance(
        self, net: Net, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, clip_denoised: bool
    ) -> dict[str, torch.Tensor]:
        output = net(x_t, self._original_timesteps(t), y)
        return self._reverse_from_output(output, x_t, t, clip_denoised)

    def _reverse_from_output(
        self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip_denoised: bool
    ) -> dict[str, torch.Tensor]:
        eps, variance_value = self._split_output(output, x_t)
        if variance_value is None:
            log_variance = self._coefficient("fixed_log_variance", t, x_t).expand_as(x_t)
        else:
            fraction = (variance_value + 1.0) / 2.0
            log_variance = fraction * self._coefficient("log_betas", t, x_t) + (
                1.0 - fraction
            ) * self._coefficient("posterior_log_variance_clipped", t, x_t)
        pred_x0 = (
            self._coefficient("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self._coefficient("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
            eps = (
                self._coefficient("sqrt_recip_alphas_cumprod", t, x_t) * x_t - pred_x0
            ) / self._coefficient("sqrt_recipm1_alphas_cumprod", t, x_t)
        mean, _, _ = self._posterior(pred_x0, x_t, t)
        return {
            "mean": mean,
            "variance": log_variance.exp(),
            "log_variance": log_variance,
            "pred_x0": pred_x0,
            "eps": eps,
        }

    # ----------------------------------------------------------------------------- training

    def training_losses(
        self,
        net: Net,
        x0: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        check_timesteps: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Per-sample hybrid loss: dict of loss = mse + vb, mse and vb, each of shape (B,).

        mse is the mean squared eps error over the non-batch dims. With learned sigma, vb is the
        variational bound term in bits per dim with the predicted mean detached, so it trains only
        the variance (improved DDPM): KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0 and the
        discretised Gaussian decoder NLL at t = 0, scaled by T/1000 so respaced processes match
        the 1000-step scale. Without learned sigma vb is zero. `check_timesteps=False` skips the
        range check of t (a device sync) for a caller that validated t (DiffusionModel.loss).
        """
        if check_timesteps:
            self._check_timesteps(t, x0.shape[0])
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self._q_sample(x0, t, noise)
        output = net(x_t, self._original_timesteps(t), y)
        eps, variance_value = self._split_output(output, x_t)
        mse = _mean_flat((noise - eps) ** 2)
        if variance_value is None:
            vb = torch.zeros_like(mse)
        else:
            frozen = torch.cat([eps.detach(), variance_value], dim=1)
            vb = self._vb_bits_per_dim(frozen, x0, x_t, t) * (self.num_timesteps / 1000.0)
        return {"loss": mse + vb, "mse": mse, "vb": vb}

    def _vb_bits_per_dim(
        self, output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        true_mean, _, true_log_variance = self._posterior(x0, x_t, t)
        model = self._reverse_from_output(output, x_t, t, clip_denoised=False)
        kl = _mean_flat(
            normal_kl(true_mean, true_log_variance, model["mean"], model["log_variance"])
        ) / math.log(2.0)
        decoder_nll = -_mean_flat(
            discretized_gaussian_log_likelihood(
                x0, model["mean"], 0.5 * model["log_variance"], normal_cdf=self.normal_cdf
            )
        ) / math.log(2.0)
        return torch.where(t == 0, decoder_nll, kl)

    # ----------------------------------------------------------------------------- respacing

    def respace(self, spec: str | int | Sequence[int]) -> GaussianDiffusion:
        """A process over a subset of this one's steps, with the same alpha_bar at the kept steps.

        `spec` is a string or int for `space_timesteps` ("250", "10,20", "ddim50") or an explicit
        sequence of kept step indices. New betas are 1 - alpha_bar_i / alpha_bar_prev over the kept
        steps; the new `timestep_map` holds the ORIGINAL indices, which the net keeps receiving.
        """
        if isinstance(spec, (str, int)):
            kept = space_timesteps(self.num_timesteps, spec)
        else:
            kept = [int(index) for index in spec]
            if not kept or kept != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= self.num_timesteps:
                raise ValueError(
                    f"explicit respacing must be a non-empty strictly increasing list of steps in "
                    f"[0, {self.num_timesteps}), got {kept[:8]}{'...' if len(kept) > 8 else ''}"
                )
        kept_tensor = torch.tensor(kept, dtype=torch.long)
        alphas_cumprod = self.alphas_cumprod[kept_tensor]
        previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        return GaussianDiffusion(
            schedule=self.schedule,
            num_timesteps=len(kept),
            learn_sigma=self.learn_sigma,
            betas=1.0 - alphas_cumprod / previous,
            timestep_map=self.timestep_map[kept_tensor],
            fixed_variance=self.fixed_variance,
            normal_cdf=self.normal_cdf,
        )

    # ----------------------------------------------------------------------------- sampling

    def _initial_noise(
        self,
        shape: Sequence[int],
        noise: torch.Tensor | None,
        generator: torch.Generator | None,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> torch.Tensor:
        if noise is not None:
            if tuple(noise.shape) != tuple(shape):
                raise ValueError(f"noise must have shape {tuple(shape)}, got {tuple(noise.shape)}")
            return noise.to(device=device or noise.device, dtype=dtype or noise.dtype)
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype or torch.float32)

    @torch.no_grad()
    def p_sample_loop(
        self,
        net: Net,
        shape: Sequence[int],
        y: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        clip_denoised: bool = False,
        generator: torch.Generator | None = None,
        progress: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """DDPM ancestral sampling over every step of this process, from x_{T-1} ~ N(0, I) to x_0."""
        x = self._initial_noise(shape, noise, generator, device, dtype)
        for step in tqdm(range(self.num_timesteps - 1, -1, -1), disable=not progress, desc="ddpm"):
            t = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
            out = self._p_mean_variance(net, x, t, y, clip_denoised)
            if step > 0:
                step_noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = out["mean"] + torch.exp(0.5 * out["log_variance"]) * step_noise
            else:
                x = out["mean"]
        return x

    @torch.no_grad()
    def ddim_sample_loop(
        self,
        net: Net,
        shape: Sequence[int],
        y: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        clip_denoised: bool = False,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        progress: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """DDIM sampling over every step of this process; eta=0 is deterministic given the start noise.

        x_{t-1} = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps_hat + sigma z with
        sigma = eta sqrt((1 - ab_prev) / (1 - ab)) sqrt(1 - ab / ab_prev).
        """
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        x = self._initial_noise(shape, noise, generator, device, dtype)
        for step in tqdm(range(self.num_timesteps - 1, -1, -1), disable=not progress, desc="ddim"):
            t = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
            out = self._p_mean_variance(net, x, t, y, clip_denoised)
            alpha_bar = self._coefficient("alphas_cumprod", t, x)
            alpha_bar_prev = self._coefficient("alphas_cumprod_prev", t, x)
            sigma = eta * torch.sqrt(
                (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)
            )
            x = (
                alpha_bar_prev.sqrt() * out["pred_x0"]
                + torch.sqrt(1 - alpha_bar_prev - sigma**2) * out["eps"]
            )
            if eta > 0 and step > 0:
                x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x

    def sample(
        self,
        net: Net,
        shape: Sequence[int],
        y: torch.Tensor | None = None,
        sampler: str = "ddpm",
        steps: int | str | None = None,
        guidance: float = 1.0,
        guidance_channels: int | None = None,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        clip_denoised: bool = False,
        progress: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **options: Any,
    ) -> torch.Tensor:
        """Draw samples of `shape` (B, C, H, W): the front door to the solvers (`self.solvers`).

        `steps`: None runs this process as is; an int respaces ("250" for DDPM, "ddim50" for DDIM;
        `dpm++2m` takes an int only); a string is a respacing spec. `guidance` != 1 applies
        classifier-free guidance (one forward on the doubled batch; see `classifier_free_guidance`).
        `options` are the solver's own keywords (`grid="karras"` for `dpm++2m`); one the solver does not
        take is an error. `device` defaults to the net's parameters' device, `dtype` to float32. The
        net's train/eval mode is left as it is. All randomness comes from `generator`.
        """
        solve = get_solver("ddpm", sampler)  # an unknown solver names those that fit, before any work
        check_sampling_numbers(guidance, eta)  # before any work: NaN guidance would draw black images
        if sampler != "ddim" and eta != 0.0:
            raise ValueError(f"eta is a DDIM parameter; got eta={eta} with sampler={sampler!r}")
        keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        parameters = inspect.signature(solve).parameters.values()
        accepted = {p.name for p in parameters if p.kind in keyword} - _SOLVER_ARGUMENTS
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise TypeError(
                f"solver {sampler!r} takes no option {unknown[0]!r}; its options: {sorted(accepted) or 'none'}"
            )
        if len(shape) < 2:
            raise ValueError(f"shape must be (B, C, ...), got {tuple(shape)}")
        if y is not None and tuple(y.shape) != (shape[0],):
            raise ValueError(f"y must have shape ({shape[0]},), got {tuple(y.shape)}")
        if steps is not None and isinstance(steps, int) and not isinstance(steps, bool):
            least = getattr(solve, "min_steps", 1)
            if steps < least or steps > self.num_timesteps:
                raise ValueError(
                    f"steps must lie in [{least}, {self.num_timesteps}] for solver {sampler!r}, got {steps}"
                )
        if device is None:
            parameter = next(net.parameters(), None) if isinstance(net, torch.nn.Module) else None
            device = (
                parameter.device if parameter is not None else (noise.device if noise is not None else "cpu")
            )
        if guidance != 1.0:
            if y is None:
                raise ValueError(f"guidance={guidance} needs class labels y; got y=None")
            net = classifier_free_guidance(net, guidance, guidance_channels)
        if y is not None:
            y = y.to(device)
        common = dict(
            y=y,
            noise=noise,
            clip_denoised=clip_denoised,
            generator=generator,
            progress=progress,
            device=device,
            dtype=dtype,
        )
        return solve(self, net, shape, steps=steps, eta=eta, **common, **options)

    @property
    def solvers(self) -> list[str]:
        """The solvers of this process (`zoo.diffusion.solvers_for("ddpm")`)."""
        return solvers_for("ddpm")


@register_solver("ddpm", process="ddpm")
def ddpm_solver(
    process: GaussianDiffusion,
    net: Net,
    shape: Sequence[int],
    steps: int | str | None = None,
    eta: float = 0.0,
    **common: Any,
) -> torch.Tensor:
    """DDPM ancestral sampling over `steps` respaced steps (an int, a respacing spec, or None: all)."""
    if steps is not None:
        process = process.respace(str(steps) if isinstance(steps, int) else steps)
    return process.p_sample_loop(net, shape, **common)


@register_solver("ddim", process="ddpm")
def ddim_solver(
    process: GaussianDiffusion,
    net: Net,
    shape: Sequence[int],
    steps: int | str | None = None,
    eta: float = 0.0,
    **common: Any,
) -> torch.Tensor:
    """DDIM over `steps` evenly strided steps (`ddim{N}` respacing; or a spec), with `eta`."""
    if steps is not None:
        process = process.respace(f"ddim{steps}" if isinstance(steps, int) else steps)
    return process.ddim_sample_loop(net, shape, eta=eta, **common)
