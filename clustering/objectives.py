"""Objectives of interval clustering: each one turns its input into a table of interval costs.

An objective is registered with `@register_objective(name, needs=...)` on one function. A *cost*
objective returns the (T, T) table `cost[l, r]` of the interval [l, r] (inclusive, l <= r; entries
below the diagonal are ignored), which the dynamic programme in `clustering.intervals` minimises
exactly. A *partition* objective (`partition=True`) returns the intervals themselves, no DP.

Interval costs follow ANT (Go et al., NeurIPS 2023), 0-indexed t:

- deviation objectives (`snr`, `logsnr`, `timestep`): sum over t in [l, r] of |v_t - v_c| with the
  centre c = round_half_to_even((l + r + 1) / 2); a singleton [t, t] costs 0;
- `affinity`: -sum over t in [l, r] of A[c, t] with c = floor((l + r + 1) / 2) (a singleton costs
  -A[t, t]);
- `uniform`: cluster i = [int(T / K * i), int(T / K * (i + 1)) - 1], what ANT's released training used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

Needs = Literal["snr", "affinity"] | None


@dataclass(frozen=True)
class Objective:
    """A registered objective: its function, the input it needs and whether it is a fixed partition."""

    name: str
    fn: Callable[..., object]
    needs: Needs
    partition: bool
    description: str


_OBJECTIVES: dict[str, Objective] = {}


class UnknownNameError(KeyError, ValueError):
    """A name the objective registry does not hold: a KeyError (a look-up miss) and a ValueError (bad input).

    The same pair as zoo.models.UnknownNameError (parts do not import each other, so each defines its own).
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def register_objective(
    name: str, *, needs: Needs = None, partition: bool = False
) -> Callable[[Callable[..., object]], Callable[..., object]]:
    """Register an objective under `name`.

    A cost objective is `fn(values, num_timesteps) -> ndarray (T, T)` where `values` is the validated
    input named by `needs` (float64 SNR of shape (T,), affinity of shape (T, T), or None). A partition
    objective (`partition=True`) is `fn(k, num_timesteps) -> list[(lo, hi)]`.
    """
    if needs not in (None, "snr", "affinity"):
        raise ValueError(f"needs must be None, 'snr' or 'affinity', got {needs!r}")

    def decorator(fn: Callable[..., object]) -> Callable[..., object]:
        if name in _OBJECTIVES:
            raise ValueError(f"objective {name!r} is already registered")
        description = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _OBJECTIVES[name] = Objective(name, fn, needs, partition, description)
        return fn

    return decorator


def list_objectives() -> list[str]:
    """Names of the registered objectives, sorted."""
    return sorted(_OBJECTIVES)


def get_objective(name: str) -> Objective:
    """The registered objective `name`; an unknown name is an error listing the valid ones."""
    if name not in _OBJECTIVES:
        raise UnknownNameError(f"unknown clustering objective {name!r}; expected one of {list_objectives()}")
    return _OBJECTIVES[name]


def _interval_grid(num_timesteps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcast (l, r) index grids and the mask of valid intervals l <= r."""
    left = np.arange(num_timesteps)[:, None]
    right = np.arange(num_timesteps)[None, :]
    return left, right, left <= right


def monotone_deviation_costs(values: np.ndarray) -> np.ndarray:
    """Cost table sum_{t in [l, r]} |v_t - v_c|, c = round_half_to_even((l + r + 1) / 2), for monotone v.

    Monotonicity makes every term left of c one sign and every term right of c the other, so each
    interval cost is two prefix-sum differences: O(T^2) for the whole table. A singleton costs 0, and
    an interval whose end values are equal (v constant on it) costs exactly 0, without rounding noise.
    """
    values = np.asarray(values, dtype=np.float64)
    steps = np.diff(values)
    if not (np.all(steps >= 0) or np.all(steps <= 0)):
        raise ValueError("deviation costs need monotone values (non-increasing or non-decreasing)")
    num_timesteps = values.shape[0]
    prefix = np.concatenate([[0.0], np.cumsum(values)])
    left, right, valid = _interval_grid(num_timesteps)
    # (l + r + 1) / 2 is exact in float64 and np.rint rounds half to even.
    centre = np.clip(np.rint((left + right + 1) / 2.0).astype(np.int64), 0, num_timesteps - 1)
    centre_value = values[centre]
    below = (prefix[centre] - prefix[left]) - (centre - left) * centre_value
    above = (right - centre) * centre_value - (prefix[right + 1] - prefix[centre + 1])
    costs = np.abs(below) + np.abs(above)
    costs[values[left] == values[right]] = 0.0
    costs[~valid] = np.inf
    return costs


@register_objective("snr", needs="snr")
def snr_costs(snr: np.ndarray, num_timesteps: int) -> np.ndarray:
    """Absolute deviation of the raw SNR from the interval centre's (what the ANT authors used)."""
    return monotone_deviation_costs(snr)


@register_objective("logsnr", needs="snr")
def logsnr_costs(snr: np.ndarray, num_timesteps: int) -> np.ndarray:
    """Absolute deviation of log SNR from the interval centre's (balances high- and low-noise ends)."""
    if np.any(snr <= 0):
        raise ValueError("the 'logsnr' objective needs a strictly positive snr")
    return monotone_deviation_costs(np.log(snr))


@register_objective("timestep")
def timestep_costs(_: None, num_timesteps: int) -> np.ndarray:
    """Absolute deviation of t from the interval centre (its optimum is near-equal intervals)."""
    return monotone_deviation_costs(np.arange(num_timesteps, dtype=np.float64))


@register_objective("affinity", needs="affinity")
def affinity_costs(affinity: np.ndarray, num_timesteps: int) -> np.ndarray:
    """Minus the affinity of the interval's tasks to its centre task c = floor((l + r + 1) / 2)."""
    row_prefix = np.concatenate([np.zeros((num_timesteps, 1)), np.cumsum(affinity, axis=1)], axis=1)
    left, right, valid = _interval_grid(num_timesteps)
    centre = np.minimum((left + right + 1) // 2, num_timesteps - 1)
    costs = -(row_prefix[centre, right + 1] - row_prefix[centre, left])
    costs[~valid] = np.inf
    return costs


@register_objective("uniform", partition=True)
def uniform_intervals(k: int, num_timesteps: int) -> list[tuple[int, int]]:
    """Equal-width intervals [int(T/K*i), int(T/K*(i+1)) - 1] (ANT's released training scripts)."""
    width = num_timesteps / k
    return [(int(width * i), int(width * (i + 1)) - 1) for i in range(k)]
