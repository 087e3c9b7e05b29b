"""DPM-Solver++(2M): the multistep second-order solver of the diffusion ODE in data prediction (Lu et al.
2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models", Algorithm 2).

The Gaussian diffusion's probability-flow ODE, written in lambda = log(alpha / sigma) (half the log-SNR)
with the data prediction x0(x, lambda), has the exact solution
    x_t = (sigma_t / sigma_s) x_s + sigma_t * integral_{lambda_s}^{lambda_t} e^lambda x0(x_lambda) dlambda.
With h = lambda_t - lambda_s, holding x0 constant gives the first-order step (DDIM)
    x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) D0,                          D0 = x0(x_s),
and the multistep second-order step adds a finite difference of the previous data prediction x0(x_{s'})
(r = h_prev / h, h_prev = lambda_s - lambda_{s'}):
    x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) (D0 + D1 / 2),               D1 = (D0 - x0(x_{s'})) / r.
One net evaluation per step: NFE = steps.

The time grid and the step orders follow diffusers' `DPMSolverMultistepScheduler` with its defaults
(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
euler_at_final=False, final_sigmas_type="zero", timestep_spacing="linspace"):

- `grid="uniform"`: the N timesteps round(linspace(0, T - 1, N + 1))[::-1][:-1] (T - 1 down to about
  (T - 1) / N), each at its own noise level;
- `grid="karras"`: N noise levels sigma (the variance-exploding sigma = sqrt((1 - abar) / abar)) spaced as
  Karras et al. 2022 (rho = 7) from sigma(T - 1) down to sigma(0); the net is called at the timestep
  whose log-sigma is nearest by linear interpolation, rounded to an integer (the routing tables and the
  timestep embedding are trained on integer timesteps), while the solver steps between the exact Karras
  levels;
- after the last grid point the solver steps to sigma = 0: that last step is first order and returns the
  data prediction D0 itself (as diffusers' final_sigmas_type="zero"); the first step is first order too
  (no history yet); every step between is second order. A second-order step first occurs with 3 steps,
  the fewest this solver accepts.

A learned-sigma net's variance half is ignored (the ODE needs only eps). With `clip_denoised` the data
prediction is clipped to [-1, 1] before it enters the update (pixel models, as their DDPM / DDIM
sampling clips it). The solver is deterministic given the start noise; the generator draws only that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from zoo.diffusion.gaussian import GaussianDiffusion, Net
from zoo.diffusion.registry import register_solver

__all__ = ["GRIDS", "KARRAS_RHO", "dpm_solver_grid", "dpmpp_2m_solver"]

#: the time grids of `dpm++2m`
GRIDS = ("uniform", "karras")
#: rho of the Karras et al. 2022 noise levels (the paper's value, diffusers' too)
KARRAS_RHO = 7.0
#: the fewest steps of `dpm++2m`: with fewer, no second-order step is ever taken
MIN_STEPS = 3


def dpm_solver_grid(
    process: GaussianDiffusion, steps: int, grid: str = "uniform"
) -> tuple[np.ndarray, np.ndarray]:
    """(steps,) process step indices the net is called at and (steps + 1,) float64 VE sigmas (last 0).

    The step indices index `process` (its `timestep_map` gives the original timesteps the net receives).
    """
    if grid not in GRIDS:
        raise ValueError(f"unknown dpm++2m grid {grid!r}; expected one of {GRIDS}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise ValueError(f"dpm++2m needs an integer number of steps, got {steps!r}")
    num_timesteps = process.num_timesteps
    if not MIN_STEPS <= steps <= num_timesteps:
        raise ValueError(
            f"dpm++2m needs steps in [{MIN_STEPS}, {num_timesteps}] (with fewer than {MIN_STEPS} it never takes "
            f"a second-order step), got {steps}"
        )
    alphas_cumprod = process.alphas_cumprod.numpy()
    all_sigmas = np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)
    if grid == "uniform":
        indices = np.linspace(0, num_timesteps - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
        if len(np.unique(indices)) != steps:
            raise ValueError(
                f"dpm++2m with the uniform grid: {steps} steps over {num_timesteps} timesteps repeat a "
                f"timestep (a zero step); use fewer steps or grid='karras'"
            )
        sigmas = all_sigmas[indices]
    else:
        ramp = np.linspace(0.0, 1.0, steps)
        low, high = all_sigmas[0] ** (1.0 / KARRAS_RHO), all_sigmas[-1] ** (1.0 / KARRAS_RHO)
        sigmas = (high + ramp * (low - high)) ** KARRAS_RHO
        if bool((np.diff(sigmas) >= 0).any()):
            raise ValueError("dpm++2m with the Karras grid needs a strictly increasing noise schedule")
        # linear interpolation in log sigma over the timesteps (log sigma increases with t), then rounded
        position = np.interp(np.log(sigmas), np.log(all_sigmas), np.arange(num_timesteps, dtype=np.float64))
        indices = position.round().astype(np.int64)
    return indices, np.concatenate([sigmas, [0.0]])


@register_solver("dpm++2m", process="ddpm")
def dpmpp_2m_solver(
    process: GaussianDiffusion,
    net: Net,
    shape: Sequence[int],
    steps: int | str | None = None,
    eta: float = 0.0,
    grid: str = "uniform",
    y: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    clip_denoised: bool = False,
    generator: torch.Generator | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) over `steps` grid points (`grid`: "uniform" or "karras"); NFE = steps."""
    if eta != 0.0:
        raise ValueError(f"eta is a DDIM parameter; dpm++2m is a deterministic ODE solver, got eta={eta}")
    indices, sigmas = dpm_solver_grid(process, steps, grid)  # every check before the first forward
    alphas = 1.0 / np.sqrt(sigmas**2 + 1.0)  # VP alpha_t = sqrt(abar); the VP sigma_t is sigma * alpha_t
    with np.errstate(divide="ignore"):
        lambdas = -np.log(sigmas)  # log(alpha_t / sigma_t); +inf at the final sigma = 0
    x = process._initial_noise(shape, noise, generator, device, dtype)
    timesteps = process.timestep_map[torch.as_tensor(indices)].to(x.device)
    previous: torch.Tensor | None = None  # the data prediction of the previous step
    for i in tqdm(range(len(indices)), disable=not progress, desc="dpm++2m"):
        alpha_s, sigma_s = float(alphas[i]), float(sigmas[i] * alphas[i])
        t = timesteps[i].expand(x.shape[0])
        eps, _ = process._split_output(net(x, t, y), x)
        denoised = (x - sigma_s * eps) / alpha_s
        if clip_denoised:
            denoised = denoised.clamp(-1.0, 1.0)
        if sigmas[i + 1] == 0.0:  # the last step, to sigma = 0: x_0 is the data prediction
            x = denoised
            break
        h = float(lambdas[i + 1] - lambdas[i])
        ratio = float(sigmas[i + 1] * alphas[i + 1]) / sigma_s  # sigma_t / sigma_s (VP)
        gain = float(alphas[i + 1]) * -math.expm1(-h)  # alpha_t (1 - e^{-h})
        if previous is None:  # the first step: first order
            x = ratio * x + gain * denoised
        else:
            r = float(lambdas[i] - lambdas[i - 1]) / h
            x = ratio * x + gain * denoised + (0.5 * gain / r) * (denoised - previous)
        previous = denoised
    return x


dpmpp_2m_solver.min_steps = MIN_STEPS
