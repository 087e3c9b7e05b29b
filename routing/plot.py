"""Draw a routing table as a tasks x channels heatmap PNG, like the mask figure of the DTR paper."""

from __future__ import annotations

from pathlib import Path

import torch


def plot_table(table: torch.Tensor, path: str | Path, title: str | None = None) -> Path:
    """Save the (T, C) 0/1 table as a heatmap (active channels dark, t = 0 at the bottom); returns the path.

    matplotlib is imported here, with the non-interactive Agg backend, so importing ``routing`` stays cheap.
    """
    if table.dim() != 2:
        raise ValueError(f"table must be 2-D (tasks, channels), got shape {tuple(table.shape)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_tasks, channels = table.shape
    figure, axes = plt.subplots(figsize=(6.0, 4.5), dpi=120)
    axes.imshow(
        table.detach().cpu().to(torch.float32).numpy(),
        cmap="Greys",
        vmin=0.0,
        vmax=1.0,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        extent=(-0.5, channels - 0.5, -0.5, num_tasks - 0.5),
    )
    axes.set_xlabel("channel")
    axes.set_ylabel("task (timestep t)")
    axes.set_title(title or f"routing mask ({num_tasks} tasks x {channels} channels; dark = active)")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    plt.close(figure)
    return path
