"""Exact interval clustering of the T timesteps into K contiguous clusters by dynamic programming.

`best[j, i]` is the least total cost of covering timesteps 0..i with j + 1 intervals:
best[0, i] = cost[0, i] and best[j, i] = min over L < i of best[j - 1, L] + cost[L + 1, i].
Each level is one vectorised (T, T) min, so the whole DP is O(K T^2) array work: T = 1000, K = 8
takes milliseconds. Every partition is considered, singletons included.

`legacy=True` reproduces the ANT authors' released DP (`interval_clustering.py`) for comparison with
their numbers. Its quirks, each kept on purpose:

1. the split point starts one too late (L ranges over j..i-1 instead of j-1..i-1), so the first
   cluster always holds at least two timesteps;
2. a candidate whose total cost is exactly 0 is treated as invalid (their candidate array starts at
   zeros and zeros are replaced by infinity);
3. the bounds are returned shifted by one: cluster i is reported as [L_i, L_{i+1} - 1] where the
   real cluster is [L_i + 1, L_{i+1}] (the first still starts at 0);
4. the last reported upper bound is hard-coded (1000 in their code, i.e. T).

Ties between equal candidates go to the smallest split point in both modes (numpy's argmin, like
theirs). Under legacy, `TaskClusters.intervals` is the partition their DP really chose and
`reported_intervals` what their code printed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .clusters import TaskClusters
from .objectives import get_objective, list_objectives


def interval_clustering(
    k: int,
    objective: str,
    *,
    snr: Any = None,
    affinity: Any = None,
    num_timesteps: int = 1000,
    legacy: bool = False,
) -> TaskClusters:
    """Cluster timesteps 0..T-1 into `k` contiguous intervals minimising `objective` (see `list_objectives()`).

    `snr` (1-D, length T, e.g. `GaussianDiffusion.snr`) is needed by "snr" and "logsnr", `affinity`
    ((T, T), e.g. `affinity.expand_affinity(measure(...), ...)`) by "affinity". Tensors, arrays and
    lists are accepted. `legacy=True` reproduces the ANT authors' DP quirks (module docstring).
    """
    num_timesteps = _check_int("num_timesteps", num_timesteps, 1)
    k = _check_int("k", k, 1)
    if k > num_timesteps:
        raise ValueError(f"k must be <= num_timesteps={num_timesteps}, got k={k}")
    if not isinstance(objective, str):
        raise ValueError(f"objective must be a name, one of {list_objectives()}; got {objective!r}")
    spec = get_objective(objective)
    snr_values = None if snr is None else _as_snr(snr, num_timesteps)
    affinity_values = None if affinity is None else _as_affinity(affinity, num_timesteps)

    if spec.partition:
        if legacy:
            raise ValueError(
                f"legacy=True applies to DP objectives only, not the fixed partition {objective!r}"
            )
        return TaskClusters(spec.fn(k, num_timesteps), num_timesteps, objective=objective)

    if spec.needs == "snr":
        if snr_values is None:
            raise ValueError(f"objective {objective!r} needs snr= (a length-{num_timesteps} 1-D tensor)")
        values = snr_values
    elif spec.needs == "affinity":
        if affinity_values is None:
            raise ValueError(
                f"objective {objective!r} needs affinity= (a ({num_timesteps}, {num_timesteps}) matrix)"
            )
        values = affinity_values
    else:
        values = None
    costs = np.asarray(spec.fn(values, num_timesteps), dtype=np.float64)
    if costs.shape != (num_timesteps, num_timesteps):
        raise ValueError(
            f"objective {objective!r} returned a cost table of shape {costs.shape}, "
            f"expected ({num_timesteps}, {num_timesteps})"
        )
    intervals = optimal_intervals(costs, k, legacy=legacy)
    value = float(sum(costs[lo, hi] for lo, hi in intervals))
    reported = _legacy_report(intervals, num_timesteps) if legacy else None
    return TaskClusters(
        intervals,
        num_timesteps,
        objective=objective,
        objective_value=value,
        legacy=legacy,
        reported_intervals=reported,
    )


def optimal_intervals(costs: np.ndarray, k: int, legacy: bool = False) -> list[tuple[int, int]]:
    """The K contiguous intervals of 0..T-1 minimising the summed `costs[l, r]` (upper triangle used).

    Exact unless `legacy`, which reproduces the ANT authors' DP (module docstring).
    """
    num_timesteps = costs.shape[0]
    upper = np.triu(np.ones((num_timesteps, num_timesteps), dtype=bool))
    costs = np.where(upper, costs, np.inf)
    # tail[L, i] = cost of the last interval [L + 1, i] after a split at L (inf unless L < i).
    tail = costs[1:, :]
    best = costs[0].copy()
    splits = np.zeros((k, num_timesteps), dtype=np.int64)
    for level in range(1, k):
        candidates = best[:-1, None] + tail
        if legacy:
            candidates[:level] = np.inf  # quirk 1: split point starts one too late
            candidates[candidates == 0] = np.inf  # quirk 2: exactly-zero candidates are invalid
        splits[level] = np.argmin(candidates, axis=0)
        best = candidates[splits[level], np.arange(num_timesteps)]
    if not np.isfinite(best[-1]):
        mode = "the legacy DP (first cluster >= 2 timesteps, no zero-cost candidates)" if legacy else "the DP"
        raise ValueError(f"{mode} found no partition of {num_timesteps} timesteps into {k} clusters")
    bounds = [num_timesteps - 1]
    for level in range(k - 1, 0, -1):
        bounds.append(int(splits[level, bounds[-1]]))
    ends = bounds[::-1]
    starts = [0] + [end + 1 for end in ends[:-1]]
    return list(zip(starts, ends))


def _legacy_report(intervals: list[tuple[int, int]], num_timesteps: int) -> list[tuple[int, int]]:
    """The authors' printed bounds: quirk 3 (shift by one) and quirk 4 (last bound hard-coded to T)."""
    split_points = [0] + [hi for _, hi in intervals[:-1]]
    return [
        (split_points[i], split_points[i + 1] - 1 if i + 1 < len(intervals) else num_timesteps)
        for i in range(len(intervals))
    ]


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _to_numpy(name: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().numpy()
    array = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite; it holds NaN or infinity")
    return array


def _as_snr(snr: Any, num_timesteps: int) -> np.ndarray:
    array = _to_numpy("snr", snr)
    if array.shape != (num_timesteps,):
        raise ValueError(f"snr must be 1-D of length num_timesteps={num_timesteps}, got shape {array.shape}")
    return array


def _as_affinity(affinity: Any, num_timesteps: int) -> np.ndarray:
    array = _to_numpy("affinity", affinity)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"affinity must be a square matrix, got shape {array.shape}")
    if array.shape[0] != num_timesteps:
        raise ValueError(
            f"affinity must be ({num_timesteps}, {num_timesteps}) for num_timesteps={num_timesteps}, "
            f"got {array.shape}; expand a group matrix with clustering.affinity.expand_affinity"
        )
    return array
