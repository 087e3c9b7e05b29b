"""Flow matching on the linear interpolant of SiT (Ma et al., 2024): process "flow", solvers euler / heun / sde.

Time follows SiT's convention: t = 0 is noise, t = 1 is data, x_t = t x + (1 - t) eps (alpha_t = t,
sigma_t = 1 - t, SiT's `Linear` path). The net predicts the velocity u = dx_t/dt = x - eps and is fed the
continuous time t in [0, 1] itself, as SiT's `model(x_t, t, y)` is (the DiT time embedding of a float).
No variance is learned: a net whose output has 2 x in_channels channels (SiT's released XL/2 has
`learn_sigma=True`) contributes its first half, as SiT's forward keeps `x.chunk(2)[0]`.

Tasks. Routing tables, timestep clusters and the per-sample weightings index T (default 1,000) discrete
tasks, task 0 = least noise as for DDPM. The rule: time bin [k/T, (k+1)/T) is task T - 1 - k, so
`task_of(t) = T - 1 - floor(T t)` (clamped to [0, T - 1]; t = 1 is task 0, t = 0 task T - 1); a task's own
time is its bin's centre `(T - task - 0.5) / T`, where `snr` = (t / (1 - t))^2 is taken (finite at every
task). Training draws SiT's time range: SiT's `create_transport` sets train_eps = sample_eps = 0 for a
velocity model on the linear path, so t ~ U[0, 1); here an integer task draws t uniformly in its bin, so
uniformly drawn tasks give exactly U[0, 1), and a float t in [0, 1] is used as given.

Solvers (`steps` = N):
- `euler`, `heun`: the ODE dx/dt = u(x, t) from t = 0 (noise) to t = 1 (data) on the uniform grid
  t_i = i / N, i = 0..N (SiT's `linspace(0, 1, num_steps)` with num_steps = N + 1 points); Euler makes N
  net calls, Heun (torchdiffeq's `heun2`: predictor, then the trapezoid corrector at t_{i+1}) 2N.
- `sde`: SiT's Euler-Maruyama with its command-line defaults (train_utils.py: `--diffusion-form sigma`,
  `--diffusion-norm 1`, `--last-step Mean`, `--last-step-size 0.04`): diffusion w(t) = 1 - t, score
  s = (t u - x) / (1 - t), drift u + w s; N - 1 steps on `linspace(0, 1 - 0.04, N)` each adding
  sqrt(2 w dt) z, then the mean step x + 0.04 (u + w s) at t = 0.96 without noise: N net calls in all, as
  SiT's `sample_sde(num_steps=N)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from zoo.diffusion.gaussian import classifier_free_guidance
from zoo.diffusion.registry import get_solver, register_process, register_solver, solvers_for
from zoo.validate import check_sampling_numbers

__all__ = ["FlowMatching", "SDE_LAST_STEP_SIZE", "DEFAULT_FLOW_STEPS"]

Net = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]

#: the paths this process implements (SiT's `--path-type`; the config's `schedule` field names it)
PATHS = ("linear",)
#: SiT's `--last-step-size` default: the SDE integrates to t = 1 - 0.04, then takes one mean step
SDE_LAST_STEP_SIZE = 0.04
#: solver steps when `steps=None` (SiT's `--num-sampling-steps` default)
DEFAULT_FLOW_STEPS = 250


def _mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.mean(dim=tuple(range(1, tensor.ndim)))


def _per_sample(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return value.reshape(-1, *([1] * (like.ndim - 1)))


@register_process("flow")
class FlowMatching:
    """SiT's linear-interpolant flow matching with velocity prediction over T discrete tasks (see module).

    `learn_sigma` states the net's output layout only: True for a net with 2 x in_channels outputs whose
    second half is unused (SiT's released checkpoint); the loss and the solvers read the first half.
    """

    prediction = "velocity"

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> FlowMatching:
        return cls(
            num_timesteps=section.get("num_timesteps", 1000),
            learn_sigma=section.get("learn_sigma", False),
            schedule=section.get("schedule", "linear"),
        )

    def __init__(
        self, num_timesteps: int = 1000, learn_sigma: bool = False, schedule: str = "linear"
    ) -> None:
        if schedule not in PATHS:
            raise ValueError(
                f"the flow process implements SiT's linear path only (schedule {PATHS}), got {schedule!r}"
            )
        if isinstance(num_timesteps, bool) or int(num_timesteps) != num_timesteps or num_timesteps < 1:
            raise ValueError(
                f"num_timesteps (the number of tasks) must be an integer >= 1, got {num_timesteps!r}"
            )
        self.schedule = schedule
        self.num_timesteps = int(num_timesteps)
        self.learn_sigma = bool(learn_sigma)
        with torch.device("cpu"):  # exact float64 tables, built for real even under torch.device("meta")
            tasks = torch.arange(self.num_timesteps, dtype=torch.float64)
            #: the time of each task: the centre of its bin (task 0 nearest the data, t = 1)
            self.task_times = (self.num_timesteps - tasks - 0.5) / self.num_timesteps
            #: alpha_t^2 / sigma_t^2 = (t / (1 - t))^2 at each task's time (decreasing in the task)
            self.snr = (self.task_times / (1.0 - self.task_times)) ** 2

    def __repr__(self) -> str:
        return f"FlowMatching(schedule={self.schedule!r}, num_timesteps={self.num_timesteps})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "process": "flow",
            "schedule": self.schedule,
            "num_timesteps": self.num_timesteps,
            "learn_sigma": self.learn_sigma,
        }

    @property
    def solvers(self) -> list[str]:
        return solvers_for("flow")

    # ----------------------------------------------------------------------------- time <-> task

    def task_of(self, t: torch.Tensor) -> torch.Tensor:
        """The task (long) of continuous times t in [0, 1]: T - 1 - floor(T t), clamped to [0, T - 1]."""
        steps = self.num_timesteps
        bins = torch.floor(t.to(torch.float64) * steps).long()
        return (steps - 1 - bins).clamp(0, steps - 1)

    def time_of(self, task: torch.Tensor, offset: torch.Tensor | float = 0.5) -> torch.Tensor:
        """The float64 time of tasks at `offset` in [0, 1) of their bins (0.5: the bin's centre)."""
        return (self.num_timesteps - 1 - task.to(torch.float64) + offset) / self.num_timesteps

    def _check_timesteps(self, t: torch.Tensor, batch: int) -> None:
        """Tasks (B,) long in [0, num_timesteps): what DiffusionModel.loss validates at its boundary."""
        if not isinstance(t, torch.Tensor) or t.shape != (batch,) or t.is_floating_point():
            raise ValueError(f"t must be an integer tensor of tasks of shape ({batch},), got {t!r:.80}")
        low, high = int(t.min()), int(t.max())
        if low < 0 or high >= self.num_timesteps:
            raise ValueError(f"tasks must lie in [0, {self.num_timesteps}), got values in [{low}, {high}]")

    def _training_times(
        self, t: torch.Tensor, batch: int, generator: torch.Generator | None, check: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(continuous times float64, tasks long) of the training timesteps t (tasks or times)."""
        if not isinstance(t, torch.Tensor) or t.shape != (batch,):
            raise ValueError(f"t must be a tensor of shape ({batch},) (tasks or times), got {t!r:.80}")
        if t.is_floating_point():
            low, high = float(t.min()), float(t.max())
            if not (0.0 <= low and high <= 1.0):
                raise ValueError(f"continuous times must lie in [0, 1], got values in [{low}, {high}]")
            return t.to(torch.float64), self.task_of(t)
        if check:
            self._check_timesteps(t, batch)
        offset = torch.rand(
            batch, generator=generator, dtype=torch.float64, device=generator.device if generator else None
        )
        return self.time_of(t, offset.to(t.device)), t

    # ----------------------------------------------------------------------------- the path and the net

    def interpolate(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = t x0 + (1 - t) noise for per-sample times t (B,)."""
        time = _per_sample(t.to(x0.dtype), x0)
        return time * x0 + (1.0 - time) * noise

    def velocity(
        self, net: Net, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The net's velocity at x, times t (B,) in [0, 1]: fed t itself (SiT), and its task to a router."""
        time = t.to(device=x.device, dtype=x.dtype)
        if getattr(net, "router", None) is not None:
            output = net(x, time, y, task=self.task_of(t).to(x.device))
        else:
            output = net(x, time, y)
        channels = x.shape[1]
        expected = (x.shape[0], 2 * channels if self.learn_sigma else channels, *x.shape[2:])
        if tuple(output.shape) != expected:
            raise ValueError(
                f"net output must have shape {expected} (flow, learn_sigma={self.learn_sigma}: velocity"
                f"{' then an unused half' if self.learn_sigma else ' only'}), got {tuple(output.shape)}"
            )
        return output[:, :channels] if self.learn_sigma else output

    def velocity_field(self, net: Net) -> _VelocityField:
        """`net` as a function (x, t, y) -> velocity, with the net's `num_classes` (for guidance)."""
        return _VelocityField(self, net)

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
        """Per-sample velocity MSE (SiT's loss): loss = mse = mean over non-batch dims of (u_net - (x0 - eps))^2.

        `t` holds tasks (long: the time is drawn uniformly in each task's bin, from `generator`) or
        continuous times in [0, 1] (float, used as given). Returns loss, mse and the times used.
        `check_timesteps=False` skips the range check of integer tasks (a device sync) for a caller that
        validated them (DiffusionModel.loss).
        """
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        if noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
        time, _ = self._training_times(t, x0.shape[0], generator, check_timesteps)
        time = time.to(x0.device)
        x_t = self.interpolate(x0, noise, time)
        predicted = self.velocity(net, x_t, time, y)
        mse = _mean_flat((predicted - (x0 - noise)) ** 2)
        return {"loss": mse, "mse": mse, "time": time}

    # ----------------------------------------------------------------------------- sampling

    def time_grid(self, steps: int) -> torch.Tensor:
        """The ODE grid t_i = i / steps, i = 0..steps (float64, from noise to data)."""
        return torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)

    def sample(
        self,
        net: Net,
        shape: Sequence[int],
        y: torch.Tensor | None = None,
        sampler: str = "euler",
        steps: int | None = None,
        guidance: float = 1.0,
        guidance_channels: int | None = None,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        clip_denoised: bool = False,
        progress: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Draw samples of `shape` from noise (t = 0) to data (t = 1) with a flow solver (euler, heun, sde).

        `steps` is the number of solver steps (None: 250); `guidance` != 1 mixes
        u_uncond + s (u_cond - u_uncond) on the first `guidance_channels` channels (all when None; one
        forward on the doubled batch, `classifier_free_guidance`). `clip_denoised` clamps the final
        sample to [-1, 1]. `eta` belongs to DDIM and must stay 0. All randomness comes from `generator`.
        """
        solve = get_solver("flow", sampler)  # an unknown solver names those that fit, before any work
        check_sampling_numbers(guidance, eta)
        if eta != 0.0:
            raise ValueError(
                f"eta is a DDIM parameter; the flow solvers {self.solvers} take none, got eta={eta}"
            )
        steps = DEFAULT_FLOW_STEPS if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise ValueError(f"flow solvers take an integer number of steps, got {steps!r}")
        least = getattr(solve, "min_steps", 1)  # the solver states it (sde: 2), as dpm++2m does
        if steps < least:
            raise ValueError(f"solver {sampler!r} needs steps >= {least}, got {steps}")
        if len(shape) < 2:
            raise ValueError(f"shape must be (B, C, ...), got {tuple(shape)}")
        if y is not None and tuple(y.shape) != (shape[0],):
            raise ValueError(f"y must have shape ({shape[0]},), got {tuple(y.shape)}")
        if device is None:
            parameter = next(net.parameters(), None) if isinstance(net, torch.nn.Module) else None
            device = (
                parameter.device if parameter is not None else (noise.device if noise is not None else "cpu")
            )
        field: Net = self.velocity_field(net)
        if guidance != 1.0:
            if y is None:
                raise ValueError(f"guidance={guidance} needs class labels y; got y=None")
            field = classifier_free_guidance(field, guidance, guidance_channels)
        if y is not None:
            y = y.to(device)
        if noise is not None:
            if tuple(noise.shape) != tuple(shape):
                raise ValueError(f"noise must have shape {tuple(shape)}, got {tuple(noise.shape)}")
            x = noise.to(device=device, dtype=dtype or noise.dtype)
        else:
            x = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype or torch.float32)
        with torch.no_grad():
            out = solve(self, field, x, y=y, steps=steps, generator=generator, progress=progress)
        return out.clamp(-1.0, 1.0) if clip_denoised else out


class _VelocityField:
    """A net seen as its velocity (x, t, y) -> u; the guidance wrapper reads `num_classes`."""

    def __init__(self, process: FlowMatching, net: Net) -> None:
        self.process, self.net = process, net
        self.num_classes = getattr(net, "num_classes", None)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.process.velocity(self.net, x, t, y)


def _times(value: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), value, dtype=torch.float64, device=x.device)


@register_solver("euler", process="flow")
def euler_solver(
    process: FlowMatching,
    field: Net,
    x: torch.Tensor,
    y: Any = None,
    steps: int = 250,
    progress: bool = False,
    **_: Any,
) -> torch.Tensor:
    """Euler on t_i = i / N: x <- x + (t_{i+1} - t_i) u(x, t_i); N net calls."""
    grid = process.time_grid(steps).tolist()
    for i in tqdm(range(steps), disable=not progress, desc="euler"):
        x = x + (grid[i + 1] - grid[i]) * field(x, _times(grid[i], x), y)
    return x


@register_solver("heun", process="flow")
def heun_solver(
    process: FlowMatching,
    field: Net,
    x: torch.Tensor,
    y: Any = None,
    steps: int = 250,
    progress: bool = False,
    **_: Any,
) -> torch.Tensor:
    """Heun (explicit trapezoid) on t_i = i / N: k1 = u(x, t_i), k2 = u(x + h k1, t_{i+1}), x <- x + h/2 (k1 + k2)."""
    grid = process.time_grid(steps).tolist()
    for i in tqdm(range(steps), disable=not progress, desc="heun"):
        h = grid[i + 1] - grid[i]
        k1 = field(x, _times(grid[i], x), y)
        k2 = field(x + h * k1, _times(grid[i + 1], x), y)
        x = x + 0.5 * h * (k1 + k2)
    return x


def _sde_drift(field: Net, x: torch.Tensor, t: float, y: Any) -> tuple[torch.Tensor, float]:
    """(u + w s, w) with w = 1 - t (SiT's `sigma` form, norm 1) and s = (t u - x) / (1 - t) the score."""
    velocity = field(x, _times(t, x), y)
    diffusion = 1.0 - t
    score = (t * velocity - x) / (1.0 - t)
    return velocity + diffusion * score, diffusion


@register_solver("sde", process="flow")
def sde_solver(
    process: FlowMatching,
    field: Net,
    x: torch.Tensor,
    y: Any = None,
    steps: int = 250,
    generator: torch.Generator | None = None,
    progress: bool = False,
    **_: Any,
) -> torch.Tensor:
    """SiT's Euler-Maruyama with its defaults: N - 1 noisy steps on linspace(0, 0.96, N), one mean step of 0.04."""
    end = 1.0 - SDE_LAST_STEP_SIZE
    grid = torch.linspace(0.0, end, steps, dtype=torch.float64).tolist()
    dt = grid[1] - grid[0]
    for t in tqdm(grid[:-1], disable=not progress, desc="sde"):
        drift, diffusion = _sde_drift(field, x, t, y)
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x + drift * dt + math.sqrt(2.0 * diffusion * dt) * z
    drift, _ = _sde_drift(field, x, end, y)
    return x + drift * SDE_LAST_STEP_SIZE


sde_solver.min_steps = 2  # one noisy step and the last mean step
