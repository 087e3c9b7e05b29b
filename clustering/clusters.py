"""`TaskClusters`: K contiguous timestep intervals, stratified timestep sampling and per-cluster losses."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


class TaskClusters:
    """A partition of the timesteps {0..T-1} into K contiguous, inclusive intervals (denoising task clusters).

    `intervals` covers 0..T-1 in order without gaps. `objective_value` is the total interval cost the
    objective assigned (None for fixed partitions). When built with `legacy=True`,
    `reported_intervals` holds the bounds as the ANT authors' code printed them (shifted by one, last
    bound hard-coded); `intervals` is always the real partition.
    """

    def __init__(
        self,
        intervals: Sequence[Sequence[int]],
        num_timesteps: int,
        objective: str = "uniform",
        objective_value: float | None = None,
        legacy: bool = False,
        reported_intervals: Sequence[Sequence[int]] | None = None,
    ) -> None:
        self.intervals: list[tuple[int, int]] = [(int(lo), int(hi)) for lo, hi in intervals]
        self.num_timesteps = int(num_timesteps)
        self.objective = objective
        self.objective_value = None if objective_value is None else float(objective_value)
        self.legacy = bool(legacy)
        self.reported_intervals = (
            None if reported_intervals is None else [(int(lo), int(hi)) for lo, hi in reported_intervals]
        )
        _check_partition(self.intervals, self.num_timesteps)
        lookup = torch.empty(self.num_timesteps, dtype=torch.long)
        for index, (lo, hi) in enumerate(self.intervals):
            lookup[lo : hi + 1] = index
        self._lookups: dict[torch.device, Tensor] = {torch.device("cpu"): lookup}
        self._lows = torch.tensor([lo for lo, _ in self.intervals], dtype=torch.long)
        self._sizes = torch.tensor([hi - lo + 1 for lo, hi in self.intervals], dtype=torch.long)

    @classmethod
    def single(cls, num_timesteps: int = 1000) -> TaskClusters:
        """One cluster holding every timestep: plain diffusion training."""
        return cls([(0, num_timesteps - 1)], num_timesteps, objective="uniform")

    @property
    def k(self) -> int:
        """Number of clusters K."""
        return len(self.intervals)

    def _lookup(self, device: torch.device) -> Tensor:
        if device not in self._lookups:
            self._lookups[device] = self._lookups[torch.device("cpu")].to(device)
        return self._lookups[device]

    def cluster_of(self, t: Tensor | int | Sequence[int], check_timesteps: bool = True) -> Tensor:
        """Cluster index of each timestep, a LongTensor shaped like `t` (on t's device).

        `check_timesteps=False` skips the range check (a device sync) for timesteps the caller validated.
        """
        t = torch.as_tensor(t)
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"timesteps must be an integer tensor, got dtype {t.dtype}")
        if check_timesteps and t.numel() and bool(((t < 0) | (t >= self.num_timesteps)).any()):
            raise ValueError(
                f"timesteps must lie in [0, {self.num_timesteps - 1}], got min {int(t.min())}, max {int(t.max())}"
            )
        return self._lookup(t.device)[t.long()]

    def counts(self, t: Tensor) -> Tensor:
        """Number of samples of each cluster in `t`, a LongTensor (K,)."""
        return torch.bincount(self.cluster_of(t).reshape(-1), minlength=self.k)

    def sample_timesteps(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Stratified timesteps, a LongTensor (B,): sample b comes from cluster order[b % K].

        Every cluster gets B // K samples drawn uniformly inside its interval. The remainder R = B % K
        goes to R distinct clusters: `order` is a random permutation of the K clusters drawn from the
        same generator when R > 0 (the identity otherwise), and its first R clusters get one extra
        sample. So any B >= 1 works; when B < K only B clusters get a sample. Draws happen on the
        generator's device (CPU without one), then move to `device`.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        draw_device = generator.device if generator is not None else torch.device("cpu")
        if batch_size % self.k:
            order = torch.randperm(self.k, generator=generator, device=draw_device)
        else:
            order = torch.arange(self.k, device=draw_device)
        cluster = order[torch.arange(batch_size, device=draw_device) % self.k]
        lows, sizes = self._lows.to(draw_device)[cluster], self._sizes.to(draw_device)[cluster]
        uniform = torch.rand(batch_size, generator=generator, device=draw_device, dtype=torch.float64)
        offsets = torch.minimum((uniform * sizes).long(), sizes - 1)
        t = lows + offsets
        return t if device is None else t.to(device)

    def reduce(
        self, per_sample_losses: Tensor, t: Tensor, allow_empty: bool = False, check_timesteps: bool = True
    ) -> Tensor:
        """Mean loss of each cluster, a Tensor (K,), differentiable with respect to the losses.

        A cluster without samples raises a ValueError naming it, unless `allow_empty`; then its entry
        is 0 and it contributes no gradient.
        """
        if per_sample_losses.dim() != 1 or t.dim() != 1 or per_sample_losses.shape != t.shape:
            raise ValueError(
                "per_sample_losses and t must both be 1-D of the same length, got shapes "
                f"{tuple(per_sample_losses.shape)} and {tuple(t.shape)}"
            )
        cluster = self.cluster_of(t, check_timesteps).to(per_sample_losses.device)
        counts = torch.bincount(cluster, minlength=self.k)
        if not allow_empty and bool((counts == 0).any()):
            empty = [i for i, count in enumerate(counts.tolist()) if count == 0]
            described = ", ".join(f"{i} {list(self.intervals[i])}" for i in empty)
            raise ValueError(
                f"cluster(s) {described} have no samples in this batch; sample with "
                "sample_timesteps() (batch_size >= K) or pass allow_empty=True"
            )
        sums = per_sample_losses.new_zeros(self.k).index_add(0, cluster, per_sample_losses)
        return sums / counts.clamp(min=1).to(per_sample_losses.dtype)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (for config.json); `from_dict` rebuilds it."""
        return {
            "k": self.k,
            "num_timesteps": self.num_timesteps,
            "objective": self.objective,
            "intervals": [list(interval) for interval in self.intervals],
            "objective_value": self.objective_value,
            "legacy": self.legacy,
            "reported_intervals": (
                None if self.reported_intervals is None else [list(iv) for iv in self.reported_intervals]
            ),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskClusters:
        """Rebuild from `to_dict()` output; `k`, if present, must match the number of intervals."""
        missing = {"intervals", "num_timesteps"} - set(d)
        if missing:
            raise ValueError(f"cluster dict lacks keys {sorted(missing)}; expected the output of to_dict()")
        if "k" in d and d["k"] != len(d["intervals"]):
            raise ValueError(f"cluster dict says k={d['k']} but lists {len(d['intervals'])} intervals")
        return cls(
            d["intervals"],
            d["num_timesteps"],
            objective=d.get("objective", "uniform"),
            objective_value=d.get("objective_value"),
            legacy=d.get("legacy", False),
            reported_intervals=d.get("reported_intervals"),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskClusters) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"[{lo}, {hi}]" for lo, hi in self.intervals)
        value = "" if self.objective_value is None else f", objective_value={self.objective_value:.6g}"
        legacy = ", legacy=True" if self.legacy else ""
        return (
            f"TaskClusters(k={self.k}, objective={self.objective!r}, num_timesteps={self.num_timesteps}"
            f"{value}{legacy}, intervals=[{shown}])"
        )

    def plot(self, path: str | Path, snr: Any = None) -> Path:
        """Draw the intervals as coloured bands over t (and log SNR if given) into a PNG; returns the path."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        figure, axis = plt.subplots(figsize=(8, 3))
        colours = plt.get_cmap("tab10" if self.k <= 10 else "tab20")
        for index, (lo, hi) in enumerate(self.intervals):
            axis.axvspan(lo - 0.5, hi + 0.5, color=colours(index % colours.N), alpha=0.35, lw=0)
            axis.text(
                (lo + hi) / 2, 0.97, str(index), transform=axis.get_xaxis_transform(), ha="center", va="top"
            )
        if snr is not None:
            values = np.asarray(torch.as_tensor(snr, dtype=torch.float64).cpu())
            axis.plot(np.arange(values.shape[0]), np.log(values), color="black", lw=1.2)
            axis.set_ylabel("log SNR")
        else:
            axis.set_yticks([])
        axis.set_xlim(-0.5, self.num_timesteps - 0.5)
        axis.set_xlabel("timestep t")
        axis.set_title(f"{self.k} clusters, objective {self.objective!r}")
        figure.tight_layout()
        path = Path(path)
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return path


def _check_partition(intervals: list[tuple[int, int]], num_timesteps: int) -> None:
    """Raise unless the intervals cover 0..T-1 in order, contiguous and non-empty."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if not intervals:
        raise ValueError("a clustering needs at least one interval")
    expected_lo = 0
    for lo, hi in intervals:
        if lo != expected_lo or hi < lo:
            raise ValueError(
                f"intervals must be contiguous inclusive (lo, hi) pairs covering 0..{num_timesteps - 1}; "
                f"expected one starting at {expected_lo}, got ({lo}, {hi}) in {intervals}"
            )
        expected_lo = hi + 1
    if expected_lo != num_timesteps:
        raise ValueError(f"intervals must end at {num_timesteps - 1}, got {intervals[-1][1]} in {intervals}")
