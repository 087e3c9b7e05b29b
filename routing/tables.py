"""Routing tables: which channels each denoising task (timestep) may use, as (T, C) 0/1 tensors.

A table row is the channel mask of one task; a block of width C multiplies its input by the row of
the sample's timestep. Two rules are offered:

* DTR (Park et al., "Denoising Task Routing for Diffusion Models", ICLR 2024): a window of
  ``n_act = int(C * beta)`` consecutive active channels slides from the lowest channels (t = 0, least
  noisy) to the highest (t = T-1), its start following ``(t / (T-1)) ** alpha``, so neighbouring
  timesteps share most channels and alpha > 1 keeps the low-noise tasks almost together.
* Random routing (the paper's baseline): every task gets ``n_act`` channels drawn at random.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

DTRVariant = Literal["code", "paper"]
DTR_VARIANTS: tuple[str, ...] = ("code", "paper")


def check_hyperparameters(channels: int, num_tasks: int, beta: float, alpha: float | None = None) -> int:
    """Validate routing hyperparameters; returns ``n_act = int(channels * beta)``, the active channels per task."""
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be an integer >= 1, got {channels!r}")
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks must be an integer >= 1, got {num_tasks!r}")
    if not isinstance(beta, (int, float)) or not math.isfinite(beta) or not 0.0 < beta <= 1.0:
        raise ValueError(f"beta (fraction of active channels) must be in (0, 1], got {beta!r}")
    if alpha is not None and (not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0):
        raise ValueError(f"alpha (window speed) must be a finite number > 0, got {alpha!r}")
    # Truncation, as in the released code: int(1024 * 0.8) = 819.
    n_act = int(channels * beta)
    if n_act < 1:
        raise ValueError(
            f"beta * channels must leave at least 1 active channel, got int({channels} * {beta}) = {n_act}; "
            f"use beta >= {1 / channels:.4g}"
        )
    return n_act


def _windows_to_table(starts: np.ndarray, stops: np.ndarray, channels: int) -> torch.Tensor:
    """Bool (T, C) table with row t active on channels ``starts[t] <= c < stops[t]``."""
    channel = np.arange(channels)
    table = (channel[None, :] >= starts[:, None]) & (channel[None, :] < stops[:, None])
    return torch.from_numpy(table)


def dtr_starts(channels: int, num_tasks: int = 1000, beta: float = 0.8, alpha: float = 4.0) -> np.ndarray:
    """First active channel of each task under the released-code DTR rule (int64 array of length T).

    ``start(t) = round_half_to_even((t / (T-1)) ** alpha * (C - n_act))``, computed in float64.
    """
    n_act = check_hyperparameters(channels, num_tasks, beta, alpha)
    if num_tasks == 1:
        return np.zeros(1, dtype=np.int64)
    progress = np.arange(num_tasks, dtype=np.float64) / (num_tasks - 1)
    return np.round(progress**alpha * (channels - n_act)).astype(np.int64)


def dtr_table_bool(
    channels: int, num_tasks: int = 1000, beta: float = 0.8, alpha: float = 4.0, variant: DTRVariant = "code"
) -> torch.Tensor:
    """The DTR table as a compact bool (T, C) tensor; see :func:`dtr_table`."""
    n_act = check_hyperparameters(channels, num_tasks, beta, alpha)
    if variant == "code":
        starts = dtr_starts(channels, num_tasks, beta, alpha)
        return _windows_to_table(starts, starts + n_act, channels)
    if variant == "paper":
        # Tasks are 1-indexed t = 1..T; row t-1 is active on [lo(t), hi(t)) with
        # lo = round((C - C_beta) ((t-1)/T)^alpha), hi = round((C - C_beta) (t/T)^alpha) + C_beta.
        edges = np.round(
            (channels - n_act) * (np.arange(num_tasks + 1, dtype=np.float64) / num_tasks) ** alpha
        )
        edges = edges.astype(np.int64)
        return _windows_to_table(edges[:-1], edges[1:] + n_act, channels)
    raise ValueError(f"variant must be one of {DTR_VARIANTS}, got {variant!r}")


def dtr_table(
    channels: int, num_tasks: int = 1000, beta: float = 0.8, alpha: float = 4.0, variant: DTRVariant = "code"
) -> torch.Tensor:
    """Denoising Task Routing mask table, float32 (T, C) of 0/1; row t is the channel mask of timestep t.

    ``variant="code"`` (default) is what the authors' released code computes:
    ``n_act = int(C * beta)``, ``start(t) = round_half_to_even((t / (T-1)) ** alpha * (C - n_act))`` and
    ``mask[t, c] = 1`` iff ``start(t) <= c < start(t) + n_act``; every row has exactly ``n_act`` ones.

    ``variant="paper"`` is the formula printed in the paper, with 1-indexed tasks t = 1..T: row t-1 is
    active on ``round((C - n_act) ((t-1)/T)^alpha) <= c < round((C - n_act) (t/T)^alpha) + n_act``. It
    differs slightly from the released code: the window ends at ``C - n_act`` only for t = T, and its width
    is ``n_act`` plus the rounded step of the start, so neighbouring rows can have one or more extra
    channels where the window moves fast.

    beta = 1 gives all ones (the plain, unrouted network).
    """
    return dtr_table_bool(channels, num_tasks, beta, alpha, variant).to(torch.float32)


def random_table_bool(channels: int, num_tasks: int, n_act: int, generator: torch.Generator) -> torch.Tensor:
    """Bool (T, C) table with ``n_act`` channels per task drawn uniformly without replacement from ``generator``."""
    scores = torch.rand(num_tasks, channels, generator=generator, dtype=torch.float64)
    chosen = scores.argsort(dim=1)[:, :n_act]
    table = torch.zeros(num_tasks, channels, dtype=torch.bool)
    table.scatter_(1, chosen, True)
    return table


def random_table(channels: int, num_tasks: int = 1000, beta: float = 0.8, seed: int = 0) -> torch.Tensor:
    """Random routing table, float32 (T, C) of 0/1: each task gets ``int(C * beta)`` channels chosen at random.

    The draw comes from a CPU ``torch.Generator`` seeded with ``seed``, so the same arguments always give
    the same table (the authors' version was unseeded and could not be rebuilt).
    """
    n_act = check_hyperparameters(channels, num_tasks, beta)
    generator = torch.Generator().manual_seed(int(seed))
    return random_table_bool(channels, num_tasks, n_act, generator).to(torch.float32)


def describe_table(table: torch.Tensor) -> dict[str, object]:
    """Summary of a (T, C) 0/1 routing table, JSON-serialisable.

    Keys: ``num_tasks``, ``channels``, ``active_per_task`` (list of T counts), ``min_active``,
    ``max_active``, ``always_active`` (channels active for every task: what all tasks share),
    ``never_active`` (channels no task uses) and ``distinct_masks`` (number of different rows).
    """
    if table.dim() != 2:
        raise ValueError(f"table must be 2-D (tasks, channels), got shape {tuple(table.shape)}")
    active = table.detach().cpu() != 0
    if not torch.equal(active.to(table.dtype), table.detach().cpu()):
        raise ValueError("table must contain only 0 and 1")
    per_task = active.sum(dim=1)
    return {
        "num_tasks": int(active.shape[0]),
        "channels": int(active.shape[1]),
        "active_per_task": per_task.tolist(),
        "min_active": int(per_task.min()),
        "max_active": int(per_task.max()),
        "always_active": int(active.all(dim=0).sum()),
        "never_active": int((~active.any(dim=0)).sum()),
        "distinct_masks": int(torch.unique(active, dim=0).shape[0]),
    }
