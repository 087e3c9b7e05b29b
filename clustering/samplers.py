"""Timestep samplers: which denoising tasks (timesteps 0..T-1, task 0 = least noise) a training batch draws.

    sampler = build_sampler("lognorm", clusters, location=0.0, scale=1.0)
    t = sampler(batch_size, generator=generator, device=device)   # LongTensor (B,)

Whatever the sampler, the clusters reduce the per-sample losses to K cluster losses. A sampler is an
object with `__call__(batch, generator=None, device=None)` and `config()` (its JSON options; the name
is added by the caller); a stateful one also has `state_dict()` / `load_state_dict()` (plain JSON
values) and `after_step(cluster_losses)`, called once per optimiser step with the K cluster losses
(the same numbers on every process). Two facts every sampler states:

* `allow_empty`: whether a batch may leave a cluster without samples (the cluster reduction then gives
  that cluster a loss of 0 and no gradient);
* `equal_counts`: whether every process draws the same number of samples of every cluster, which the
  MTL balancers assume when several processes train (their weights are then those of the union batch).

| name | draws | allow_empty | equal_counts |
|---|---|---|---|
| `stratified` (default) | B // K per cluster, uniform inside it (`TaskClusters.sample_timesteps`) | no | yes, when K divides B |
| `uniform` | i.i.d. uniform over the T tasks | yes | no |
| `lognorm` | logit-normal noise level (SD3, LightningDiT), mapped to a task | yes | no |
| `curriculum` | stratified over the unlocked clusters, easy to hard (Kim, Go et al. 2024) | yes | yes |

Register another with `@register_sampler(name)` on a class whose constructor takes `(clusters,
**options)`.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .clusters import TaskClusters

DEFAULT_SAMPLER = "stratified"

_SAMPLERS: dict[str, type] = {}


class UnknownNameError(KeyError, ValueError):
    """A sampler name the registry does not hold (a KeyError, as a dict miss, and a ValueError, as bad input)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def register_sampler(name: str) -> Callable[[type], type]:
    """Register a timestep sampler class under `name` (a lower-case identifier); it gets `cls.name`."""
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"timestep sampler names are lower-case identifiers, got {name!r}")

    def decorator(cls: type) -> type:
        if name in _SAMPLERS and _SAMPLERS[name] is not cls:
            raise ValueError(
                f"timestep sampler {name!r} is already registered to {_SAMPLERS[name].__qualname__}"
            )
        for attribute in ("__call__", "config"):
            if not callable(getattr(cls, attribute, None)):
                raise TypeError(f"@register_sampler({name!r}): {cls.__qualname__} must define {attribute}()")
        cls.name = name
        _SAMPLERS[name] = cls
        return cls

    return decorator


def list_samplers() -> list[str]:
    """The registered timestep sampler names, sorted."""
    return sorted(_SAMPLERS)


def get_sampler(name: str) -> type:
    """The class registered under `name`; a miss is an `UnknownNameError` listing close matches."""
    if name not in _SAMPLERS:
        pool = list_samplers()
        matches = difflib.get_close_matches(str(name), pool, n=5, cutoff=0.4)
        hint = f" Did you mean: {', '.join(matches)}?" if matches else ""
        raise UnknownNameError(f"unknown timestep sampler {name!r}; expected one of {pool}.{hint}")
    return _SAMPLERS[name]


def build_sampler(name: str | None, clusters: TaskClusters, **options: Any) -> Any:
    """The sampler `name` (None: the default, stratified) over `clusters`, with its options."""
    if not isinstance(clusters, TaskClusters):
        raise TypeError(f"clusters must be a TaskClusters, got {type(clusters).__name__}")
    return get_sampler(DEFAULT_SAMPLER if name is None else name)(clusters, **options)


# ------------------------------------------------------------------------------ helpers


def _check_batch(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")


def _draw_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _real(value: Any, field: str, low: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number, got {value!r}")
    if low is not None and (value <= low if strict else value < low):
        raise ValueError(f"{field} must be {'>' if strict else '>='} {low:g}, got {value!r}")
    return float(value)


def _count(value: Any, field: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{field} must be an int >= {low}, got {value!r}")
    return value


class TimestepSampler:
    """Base class: stateless, never leaves a cluster empty, equal counts on every process."""

    name: str = ""
    allow_empty: bool = False
    equal_counts: bool = True

    def __init__(self, clusters: TaskClusters) -> None:
        self.clusters = clusters
        self.num_timesteps = clusters.num_timesteps

    def __call__(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-serialisable options: `build_sampler(name, clusters, **sampler.config())` rebuilds it."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The state a resumed run continues from (plain JSON values; empty when stateless)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"timestep sampler {self.name!r} has no state, got keys {sorted(state)}")

    def after_step(self, cluster_losses: Sequence[float] | Tensor) -> dict[str, Any]:
        """Called once per optimiser step with the K cluster losses; returns what to log (nothing here)."""
        return {}

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.config().items())
        return f"{type(self).__name__}(k={self.clusters.k}, num_timesteps={self.num_timesteps}{', ' * bool(options)}{options})"


# ------------------------------------------------------------------------------ the samplers


@register_sampler("stratified")
class Stratified(TimestepSampler):
    """Every cluster gets B // K samples, uniform inside its interval; the remainder goes to a random
    set of clusters (`TaskClusters.sample_timesteps`, the same numbers for the same generator).

    Several processes: equal counts of every cluster on every process when K divides B (with a
    remainder, each process draws its own set of clusters with one more sample).
    """

    def __call__(self, batch_size, generator=None, device=None):
        return self.clusters.sample_timesteps(batch_size, generator=generator, device=device)


@register_sampler("uniform")
class Uniform(TimestepSampler):
    """I.i.d. uniform tasks, P(t = i) = 1 / T (DDPM's and ADM's sampling). A cluster of n tasks gets
    n / T of the batch on average and may get none; processes draw independent counts."""

    allow_empty = True
    equal_counts = False

    def __call__(self, batch_size, generator=None, device=None):
        _check_batch(batch_size)
        draw_device = _draw_device(generator)
        t = torch.randint(0, self.num_timesteps, (batch_size,), generator=generator, device=draw_device)
        return t if device is None else t.to(device)


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _logit(p: float) -> float:
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return math.log(p / (1.0 - p))


@register_sampler("lognorm")
class LogitNormal(TimestepSampler):
    """The logit-normal noise level of SD3 (Esser et al. 2024, sec. 3.1, `lognorm(m, s)`) and LightningDiT.

    u = sigmoid(z), z ~ N(location, scale^2), is a noise level in (0, 1): u -> 0 clean, u -> 1 pure
    noise (SD3's rectified-flow sigma; 1 - t in SiT's time, where t = 1 is data). The rule to a task:
    task = min(floor(u T), T - 1), i.e. task i holds u in [i / T, (i + 1) / T), so task 0 is the least
    noise, as everywhere in the zoo. The exact law of the task is `pmf()`:

        P(task = i) = Phi((logit((i + 1) / T) - m) / s) - Phi((logit(i / T) - m) / s)

    (logit(0) = -inf, logit(1) = +inf). Its median task is floor(sigmoid(m) T): a positive location
    moves the draws to more noise, a negative one to less; a larger scale spreads them to both ends
    (scale -> 0 puts every draw on task floor(sigmoid(m) T)). For the Gaussian diffusion u is the
    timestep as a fraction of the chain (t / T), as SD3 applies it to discrete schedules. Clusters may
    get no samples; processes draw independent counts.
    """

    allow_empty = True
    equal_counts = False

    def __init__(self, clusters: TaskClusters, location: float = 0.0, scale: float = 1.0) -> None:
        super().__init__(clusters)
        self.location = _real(location, "lognorm location")
        self.scale = _real(scale, "lognorm scale", low=0.0, strict=True)

    def config(self) -> dict[str, Any]:
        return {"location": self.location, "scale": self.scale}

    def pmf(self) -> Tensor:
        """The exact probability of each task, a float64 tensor (T,) summing to 1."""
        steps = self.num_timesteps
        cdf = [_normal_cdf((_logit(i / steps) - self.location) / self.scale) for i in range(steps + 1)]
        return torch.tensor([cdf[i + 1] - cdf[i] for i in range(steps)], dtype=torch.float64)

    def __call__(self, batch_size, generator=None, device=None):
        _check_batch(batch_size)
        draw_device = _draw_device(generator)
        z = torch.randn(batch_size, generator=generator, device=draw_device, dtype=torch.float64)
        u = torch.sigmoid(z * self.scale + self.location)
        t = torch.clamp((u * self.num_timesteps).long(), 0, self.num_timesteps - 1)
        return t if device is None else t.to(device)


@register_sampler("curriculum")
class Curriculum(TimestepSampler):
    """The denoising-task difficulty curriculum of Kim, Go, Kwon and Kim (2024, arXiv 2403.10348).

    The clusters are ordered from easy to hard (`order`; default K-1, ..., 0: most noise first, the
    paper's finding that low-noise tasks converge slowest) and the run starts with the first `start`
    of them unlocked. A batch is stratified over the unlocked clusters: each gets B // s samples
    (s unlocked), uniform inside its interval; the R = B % s extra samples go to R consecutive
    unlocked clusters (in index order) starting at position (draw * R) % s, so they rotate fairly and
    the counts depend on (B, stage, draw) alone: every process draws the same counts (`equal_counts`).
    Locked clusters get no samples (their loss is 0 and they get no gradient).

    Pacing rule (the paper's "adaptive pacing: the next stage when the current training loss has
    converged, within a maximum patience"; its exact statistics are not published in what we could
    read, so this is our rule, stated): after each optimiser step `after_step(cluster_losses)` takes
    the mean loss of the unlocked clusters, smooths it by an exponential moving average (`smoothing`;
    0 = the raw loss), and counts the steps since it last fell below (1 - `min_delta`) times its best
    value in this stage. After `patience` such steps without improvement, or `max_stage_steps` steps in
    the stage (None: no cap), the next cluster unlocks and the stage's statistics restart. With every
    cluster unlocked the sampler is stratified over all K (and, when K divides B, draws exactly the
    numbers of `stratified` for the same generator). The state (`state_dict`) resumes it.
    """

    allow_empty = True
    equal_counts = True

    def __init__(
        self,
        clusters: TaskClusters,
        patience: int = 200,
        max_stage_steps: int | None = None,
        smoothing: float = 0.9,
        min_delta: float = 1e-3,
        start: int = 1,
        order: Sequence[int] | None = None,
    ) -> None:
        super().__init__(clusters)
        k = clusters.k
        self.patience = _count(patience, "curriculum patience")
        self.max_stage_steps = (
            None if max_stage_steps is None else _count(max_stage_steps, "curriculum max_stage_steps")
        )
        self.smoothing = _real(smoothing, "curriculum smoothing", low=0.0)
        if self.smoothing >= 1.0:
            raise ValueError(f"curriculum smoothing must be in [0, 1), got {smoothing!r}")
        self.min_delta = _real(min_delta, "curriculum min_delta", low=0.0)
        if self.min_delta >= 1.0:
            raise ValueError(f"curriculum min_delta must be in [0, 1), got {min_delta!r}")
        self.start = _count(start, "curriculum start")
        if self.start > k:
            raise ValueError(f"curriculum start must be in [1, {k}] (the number of clusters), got {start}")
        order = list(range(k - 1, -1, -1)) if order is None else list(order)
        if sorted(order) != list(range(k)) or any(
            isinstance(i, bool) or not isinstance(i, int) for i in order
        ):
            raise ValueError(
                f"curriculum order must be a permutation of the {k} cluster indices, got {order!r}"
            )
        self.order = order
        self._lows = torch.tensor([lo for lo, _ in clusters.intervals], dtype=torch.long)
        self._sizes = torch.tensor([hi - lo + 1 for lo, hi in clusters.intervals], dtype=torch.long)
        self.stage = self.start
        self._reset_stage()
        self.draws = 0

    def config(self) -> dict[str, Any]:
        return {
            "patience": self.patience,
            "max_stage_steps": self.max_stage_steps,
            "smoothing": self.smoothing,
            "min_delta": self.min_delta,
            "start": self.start,
            "order": list(self.order),
        }

    def _reset_stage(self) -> None:
        self.smoothed: float | None = None
        self.best: float | None = None
        self.wait = 0
        self.stage_steps = 0

    @property
    def unlocked(self) -> list[int]:
        """The unlocked clusters, in index order."""
        return sorted(self.order[: self.stage])

    def __call__(self, batch_size, generator=None, device=None):
        _check_batch(batch_size)
        draw_device = _draw_device(generator)
        active = torch.tensor(self.unlocked, dtype=torch.long, device=draw_device)
        stage = active.numel()
        remainder = batch_size % stage
        offset = (self.draws * remainder) % stage if remainder else 0
        self.draws += 1
        cluster = active[(torch.arange(batch_size, device=draw_device) + offset) % stage]
        lows, sizes = self._lows.to(draw_device)[cluster], self._sizes.to(draw_device)[cluster]
        uniform = torch.rand(batch_size, generator=generator, device=draw_device, dtype=torch.float64)
        t = lows + torch.minimum((uniform * sizes).long(), sizes - 1)
        return t if device is None else t.to(device)

    def after_step(self, cluster_losses: Sequence[float] | Tensor) -> dict[str, Any]:
        """Apply the pacing rule to one step's K cluster losses; returns {"curriculum_stage": s}."""
        losses = torch.as_tensor(cluster_losses, dtype=torch.float64).detach().cpu().reshape(-1)
        if losses.numel() != self.clusters.k:
            raise ValueError(f"after_step expects {self.clusters.k} cluster losses, got {losses.numel()}")
        if self.stage >= self.clusters.k:
            return {"curriculum_stage": self.stage}
        value = float(losses[self.unlocked].mean())
        if not math.isfinite(value):  # a skipped step: no evidence either way
            return {"curriculum_stage": self.stage}
        self.smoothed = (
            value if self.smoothed is None else self.smoothing * self.smoothed + (1 - self.smoothing) * value
        )
        self.stage_steps += 1
        if self.best is None or self.smoothed < self.best * (1.0 - self.min_delta):
            self.best, self.wait = self.smoothed, 0
        else:
            self.wait += 1
        capped = self.max_stage_steps is not None and self.stage_steps >= self.max_stage_steps
        if self.wait >= self.patience or capped:
            self.stage += 1
            self._reset_stage()
        return {"curriculum_stage": self.stage}

    def state_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "smoothed": self.smoothed,
            "best": self.best,
            "wait": self.wait,
            "stage_steps": self.stage_steps,
            "draws": self.draws,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = set(self.state_dict())
        if set(state) != expected:
            raise ValueError(
                f"curriculum state must hold exactly {sorted(expected)}, got {sorted(state)} "
                "(a checkpoint of another timestep sampler?)"
            )
        stage = _count(state["stage"], "curriculum state stage")
        if stage > self.clusters.k:
            raise ValueError(f"curriculum state stage {stage} exceeds the {self.clusters.k} clusters")
        self.stage = stage
        self.smoothed = None if state["smoothed"] is None else float(state["smoothed"])
        self.best = None if state["best"] is None else float(state["best"])
        self.wait = _count(state["wait"], "curriculum state wait", low=0)
        self.stage_steps = _count(state["stage_steps"], "curriculum state stage_steps", low=0)
        self.draws = _count(state["draws"], "curriculum state draws", low=0)
