"""Task affinity: gradient cosine similarities, checked by hand and on a tiny DiT trained on 8x8 digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from zoo.clustering import interval_clustering
from zoo.clustering.affinity import cosine_matrix, expand_affinity, measure, plot_affinity
from zoo.models import DiT

from zoo.diffusion import GaussianDiffusion


def tiny_dit() -> DiT:
    return DiT(
        input_size=8, patch_size=2, in_channels=1, hidden_size=64, depth=2, num_heads=2, num_classes=10
    )


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0 * 2.0 - 1.0
    return images, torch.tensor(data.target, dtype=torch.long)


@pytest.fixture(scope="module")
def trained(digits):
    """A tiny DiT trained for a few hundred steps: enough for the affinity structure to appear."""
    images, labels = digits
    torch.manual_seed(0)
    net = tiny_dit()
    diffusion = GaussianDiffusion("linear", 1000, learn_sigma=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        index = torch.randint(0, len(images), (32,), generator=generator)
        t = torch.randint(0, diffusion.num_timesteps, (32,), generator=generator)
        loss = diffusion.training_losses(net, images[index], t, labels[index], generator=generator)[
            "loss"
        ].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net, diffusion


def test_affinity_falls_as_the_noise_gap_grows(trained, digits):
    """ANT's Figure 1: tasks far apart in noise level have less aligned gradients."""
    net, diffusion = trained
    images, labels = digits
    batches = [(images[i * 48 : (i + 1) * 48], labels[i * 48 : (i + 1) * 48]) for i in range(2)]
    matrix = measure(net, diffusion, batches, group=100, generator=torch.Generator().manual_seed(1))
    assert matrix.shape == (10, 10) and matrix.dtype == torch.float64
    assert torch.allclose(matrix, matrix.T, atol=1e-12)
    assert torch.allclose(matrix.diagonal(), torch.ones(10, dtype=torch.float64), atol=1e-6)
    rows, cols = np.triu_indices(10, 1)
    gaps = np.abs(rows - cols)
    values = matrix.numpy()[rows, cols]
    rho = spearmanr(gaps, values).statistic
    assert rho < -0.5, f"affinity should fall with the gap, Spearman rho = {rho:.3f}"
    assert values[gaps == 1].mean() > values[gaps >= 5].mean() + 0.1
    clusters = interval_clustering(4, "affinity", affinity=expand_affinity(matrix, 100, 1000))
    assert clusters.k == 4 and clusters.intervals[-1][1] == 999


def test_measure_matches_gradients_taken_by_hand(digits):
    torch.manual_seed(1)
    net = tiny_dit()
    # Give the zero-initialised adaLN and output layers weights, so every parameter gets a gradient.
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    diffusion = GaussianDiffusion("linear", 1000, learn_sigma=True)
    images, labels = digits
    x0, y = images[:8], labels[:8]
    steps = [0, 10, 400, 999]
    matrix = measure(net, diffusion, [(x0, y)], timesteps=steps, generator=torch.Generator().manual_seed(5))

    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    net.eval()
    flat = []
    for step in steps:
        net.zero_grad()
        t = torch.full((8,), step, dtype=torch.long)
        diffusion.training_losses(net, x0, t, y, noise=noise)["loss"].mean().backward()
        flat.append(torch.cat([p.grad.reshape(-1) for p in net.parameters() if p.requires_grad]).double())
    expected = torch.tensor(
        [[F.cosine_similarity(a, b, dim=0).item() for b in flat] for a in flat], dtype=torch.float64
    )
    assert torch.allclose(matrix, expected, atol=1e-5)


def test_checkpoints_are_averaged_and_the_net_is_restored(digits):
    torch.manual_seed(2)
    net = tiny_dit()
    diffusion = GaussianDiffusion("linear", 100, learn_sigma=True)
    states = []
    for _ in range(2):
        with torch.no_grad():
            for parameter in net.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
        states.append({k: v.clone() for k, v in net.state_dict().items()})
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(1.0)
    original = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    images, labels = digits
    batches = [(images[:6], labels[:6])]

    generator = torch.Generator().manual_seed(3)
    both = measure(net, diffusion, batches, group=25, checkpoints=states, generator=generator)
    generator = torch.Generator().manual_seed(3)
    first = measure(net, diffusion, batches, group=25, checkpoints=states[:1], generator=generator)
    second = measure(net, diffusion, batches, group=25, checkpoints=states[1:], generator=generator)
    assert torch.allclose(both, (first + second) / 2, atol=1e-12)
    assert not torch.allclose(first, second)
    assert net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, original[key])


def test_cosine_matrix_against_torch():
    vectors = torch.randn(5, 30, dtype=torch.float64)
    vectors[3] = 0.0
    matrix = cosine_matrix(vectors)
    for i in range(5):
        for j in range(5):
            expected = 0.0 if 3 in (i, j) else F.cosine_similarity(vectors[i], vectors[j], dim=0).item()
            assert matrix[i, j].item() == pytest.approx(expected, abs=1e-12)


def test_expand_affinity_repeats_group_entries():
    groups = torch.arange(16, dtype=torch.float64).reshape(4, 4)
    expanded = expand_affinity(groups, 3, 10)  # groups [0,3), [3,6), [6,9), [9,10)
    assert expanded.shape == (10, 10)
    for t in range(10):
        for s in range(10):
            assert expanded[t, s] == groups[t // 3, s // 3]
    with pytest.raises(ValueError, match=r"must be \(4, 4\) for num_timesteps=10, group=3"):
        expand_affinity(torch.ones(3, 3), 3, 10)


def test_affinity_objective_recovers_blocks_of_related_tasks():
    """With affinity 1 inside three blocks and 0 across, the unique optimum is the blocks themselves."""
    groups = torch.zeros(10, 10, dtype=torch.float64)
    for lo, hi in [(0, 2), (2, 7), (7, 10)]:
        groups[lo:hi, lo:hi] = 1.0
    clusters = interval_clustering(
        3, "affinity", affinity=expand_affinity(groups, 10, 100), num_timesteps=100
    )
    assert clusters.intervals == [(0, 19), (20, 69), (70, 99)]
    assert clusters.objective_value == pytest.approx(-100.0)


def test_measure_rejects_bad_arguments(digits):
    net, diffusion = tiny_dit(), GaussianDiffusion("linear", 50, learn_sigma=True)
    images, labels = digits
    with pytest.raises(ValueError, match="at least one"):
        measure(net, diffusion, [])
    with pytest.raises(ValueError, match=r"group must be an int in \[1, 50\]"):
        measure(net, diffusion, [(images[:2], labels[:2])], group=0)
    with pytest.raises(ValueError, match=r"timesteps must be a non-empty list of ints in \[0, 49\]"):
        measure(net, diffusion, [(images[:2], labels[:2])], timesteps=[3, 50])


def test_plot_affinity_writes_a_png(tmp_path):
    path = plot_affinity(torch.eye(5), tmp_path / "affinity.png", group=10)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
