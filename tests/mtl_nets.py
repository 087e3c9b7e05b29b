"""Tiny float64 networks and data for the mtl tests (no cross-sample operations)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TinyNet(nn.Module):
    """Patch conv + label embedding + adaLN-style modulation + a LayerNorm + a Linear used twice."""

    def __init__(self, channels: int = 2, width: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.patch = nn.Conv2d(channels, width, kernel_size=2, stride=2)
        self.label = nn.Embedding(classes, width)
        self.time = nn.Linear(1, width)
        self.modulation = nn.Linear(width, 2 * width)
        self.norm = nn.LayerNorm(width)
        self.shared = nn.Linear(width, width)
        self.out = nn.Linear(width, channels * 4)

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        condition = self.label(y) + self.time(t[:, None].to(x.dtype) / 10)
        shift, scale = self.modulation(torch.tanh(condition)).chunk(2, dim=1)
        h = self.norm(tokens) * (1 + scale[:, None]) + shift[:, None]
        h = h + torch.tanh(self.shared(torch.tanh(self.shared(h))))
        return self.out(h)


def make_batch(k: int, per_cluster: int, seed: int = 0, dtype: torch.dtype = torch.float64):
    """Random images, labels, timesteps, targets and the cluster of each sample (every cluster filled)."""
    generator = torch.Generator().manual_seed(seed)
    batch = k * per_cluster
    x = torch.randn(batch, 2, 4, 4, generator=generator, dtype=dtype)
    y = torch.randint(0, 3, (batch,), generator=generator)
    cluster = torch.arange(batch) % k
    t = cluster * 10 + torch.randint(0, 10, (batch,), generator=generator)
    target = torch.randn(batch, 4, 8, generator=generator, dtype=dtype)
    return x, y, t, target, cluster


def cluster_losses(net: nn.Module, batch, k: int) -> Tensor:
    """Per-sample MSE reduced to (K,) cluster means."""
    x, y, t, target, cluster = batch
    per_sample = (net(x, t, y) - target).pow(2).mean(dim=(1, 2)) * (1 + t.to(x.dtype) / 20)
    totals = torch.zeros(k, dtype=per_sample.dtype).index_add(0, cluster, per_sample)
    counts = torch.bincount(cluster, minlength=k).to(per_sample.dtype)
    return totals / counts
