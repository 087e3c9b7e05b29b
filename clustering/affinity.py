"""Task affinity between denoising tasks: cosine similarity of their full-parameter loss gradients.

ANT's Figure 1 observation: the gradients of the diffusion loss at two timesteps agree less the
further apart their noise levels are. `measure` estimates that matrix for timestep groups (group g =
timesteps [g * group, (g + 1) * group); about 10 per group gives the authors' picture at 1/100 of the
cost), `expand_affinity` turns it into the (T, T) matrix the "affinity" clustering objective takes.

Only duck-typed objects are used: `net.parameters()`, `diffusion.num_timesteps` and
`diffusion.training_losses(net, x0, t, y, noise=...)["loss"]`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def measure(
    net: torch.nn.Module,
    diffusion: Any,
    batches: Iterable[tuple[Tensor, Tensor | None]],
    timesteps: Sequence[int] | None = None,
    group: int = 10,
    checkpoints: Sequence[Mapping[str, Tensor]] | None = None,
    progress: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Affinity matrix (G, G), float64: cosine similarity between loss gradients of G tasks.

    Tasks are timestep groups [g * group, (g + 1) * group) covering 0..T-1 (the last may be shorter),
    or, if `timesteps` is given, those individual timesteps (`group` is then unused). For each batch
    (x0, y) one noise draw is shared by every task and each sample's t is drawn uniformly inside the
    task's group, so tasks differ only in their timesteps. Cosine matrices are averaged over batches
    and, if `checkpoints` (state dicts) are given, over checkpoints; net's own state and train/eval
    mode are restored afterwards. The net runs in eval mode so that label dropout cannot make tasks
    see different labels. Memory: G gradient copies of the trainable parameters, in float32 on CPU.
    """
    num_timesteps = int(diffusion.num_timesteps)
    tasks = _task_ranges(num_timesteps, timesteps, group)
    batches = list(batches)
    if not batches:
        raise ValueError("measure needs at least one (x0, y) batch")
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError("net has no trainable parameters to take gradients of")
    saved_state = (
        {name: value.detach().clone() for name, value in net.state_dict().items()} if checkpoints else None
    )
    was_training = net.training
    net.eval()
    states: Sequence[Mapping[str, Tensor] | None] = list(checkpoints) if checkpoints else [None]
    total = torch.zeros(len(tasks), len(tasks), dtype=torch.float64)
    steps = len(states) * len(batches)
    bar = _progress(steps * len(tasks), progress)
    try:
        for state in states:
            if state is not None:
                net.load_state_dict(state)
            for x0, y in batches:
                gradients = _task_gradients(net, diffusion, params, x0, y, tasks, generator, bar)
                total += cosine_matrix(gradients)
    finally:
        if saved_state is not None:
            net.load_state_dict(saved_state)
        net.train(was_training)
        if bar is not None:
            bar.close()
    return total / steps


def cosine_matrix(vectors: Tensor) -> Tensor:
    """Pairwise cosine similarity (N, N), float64, of the rows of `vectors` (N, P); a zero row gives 0."""
    vectors = vectors.to(torch.float64)
    norms = vectors.norm(dim=1)
    gram = vectors @ vectors.T
    scale = torch.outer(norms, norms)
    return torch.where(
        scale > 0, gram / scale.clamp(min=torch.finfo(torch.float64).tiny), torch.zeros_like(gram)
    )


def expand_affinity(group_matrix: Tensor, group: int, num_timesteps: int) -> Tensor:
    """The (T, T) timestep affinity of a (G, G) group matrix: A[t, s] = M[t // group, s // group]."""
    group_matrix = torch.as_tensor(group_matrix)
    expected = math.ceil(num_timesteps / group)
    if group_matrix.shape != (expected, expected):
        raise ValueError(
            f"group_matrix must be ({expected}, {expected}) for num_timesteps={num_timesteps}, group={group}; "
            f"got {tuple(group_matrix.shape)}"
        )
    index = torch.arange(num_timesteps) // group
    return group_matrix[index[:, None], index[None, :]]


def plot_affinity(matrix: Tensor, path: str | Path, group: int | None = None) -> Path:
    """Heatmap PNG of an affinity matrix (axes in timesteps when `group` is given); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = torch.as_tensor(matrix, dtype=torch.float64).cpu().numpy()
    extent = None if group is None else (0, values.shape[1] * group, values.shape[0] * group, 0)
    figure, axis = plt.subplots(figsize=(5, 4.2))
    image = axis.imshow(values, cmap="viridis", extent=extent, interpolation="nearest")
    figure.colorbar(image, ax=axis, label="gradient cosine similarity")
    label = "timestep" if group is not None else "task"
    axis.set_xlabel(label)
    axis.set_ylabel(label)
    axis.set_title("task affinity")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _task_ranges(num_timesteps: int, timesteps: Sequence[int] | None, group: int) -> list[tuple[int, int]]:
    """Half-open timestep ranges [lo, hi) of the tasks."""
    if timesteps is not None:
        chosen = [int(t) for t in timesteps]
        if not chosen or any(t < 0 or t >= num_timesteps for t in chosen):
            raise ValueError(
                f"timesteps must be a non-empty list of ints in [0, {num_timesteps - 1}], got {chosen}"
            )
        return [(t, t + 1) for t in chosen]
    if isinstance(group, bool) or not isinstance(group, int) or not 1 <= group <= num_timesteps:
        raise ValueError(f"group must be an int in [1, {num_timesteps}], got {group!r}")
    return [(lo, min(lo + group, num_timesteps)) for lo in range(0, num_timesteps, group)]


def _task_gradients(
    net: torch.nn.Module,
    diffusion: Any,
    params: list[Tensor],
    x0: Tensor,
    y: Tensor | None,
    tasks: list[tuple[int, int]],
    generator: torch.Generator | None,
    bar: Any,
) -> Tensor:
    """Flattened gradient of the mean loss of each task on one batch, (G, P) float32 on CPU."""
    draw_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(x0.shape, generator=generator, device=draw_device, dtype=x0.dtype).to(x0.device)
    rows = []
    for lo, hi in tasks:
        t = torch.randint(lo, hi, (x0.shape[0],), generator=generator, device=draw_device).to(x0.device)
        loss = diffusion.training_losses(net, x0, t, y, noise=noise)["loss"].mean()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).reshape(-1).float().cpu()
                    for g, p in zip(grads, params)
                ]
            )
        )
        if bar is not None:
            bar.update(1)
    return torch.stack(rows)


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="task affinity", unit="grad")
