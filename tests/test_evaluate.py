"""The metric mathematics of zoo.eval.metrics and the shipped digits feature extractor."""

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from zoo.data import load_dataset
from zoo.eval import metrics as evaluate
from zoo.eval.classifier import DigitsClassifier, classifier_dir, load_classifier, load_digits_classifier


def _with_moments(mean: torch.Tensor, cov: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n points whose sample mean is `mean` and unbiased sample covariance is `cov`, exactly."""
    dim = mean.shape[0]
    z = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    whitening = torch.linalg.cholesky(z.T @ z / (n - 1))
    z = torch.linalg.solve_triangular(whitening, z.T, upper=False).T  # identity covariance now
    return mean + z @ torch.linalg.cholesky(cov).T


def _random_spd(dim: int, seed: int) -> torch.Tensor:
    a = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64)


def test_fid_of_a_set_against_itself_is_zero():
    points = torch.randn(300, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(evaluate.fid(points, points)) < 1e-6


def test_fid_matches_the_closed_form_between_two_gaussians():
    dim = 6
    mean_a, mean_b = torch.zeros(dim, dtype=torch.float64), torch.linspace(-1, 1, dim, dtype=torch.float64)
    cov_a, cov_b = _random_spd(dim, 1), _random_spd(dim, 2)
    a, b = _with_moments(mean_a, cov_a, 500, 3), _with_moments(mean_b, cov_b, 400, 4)
    # independent float64 re-derivation: ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)
    root_a = scipy.linalg.sqrtm(cov_a.numpy())
    cross = scipy.linalg.sqrtm(root_a @ cov_b.numpy() @ root_a).real
    expected = float(((mean_a - mean_b) ** 2).sum()) + float(
        np.trace(cov_a.numpy() + cov_b.numpy() - 2 * cross)
    )
    assert evaluate.fid(a, b) == pytest.approx(expected, rel=1e-7)


def test_fid_with_diagonal_covariances_reduces_to_per_dimension_terms():
    variances_a = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64)
    variances_b = torch.tensor([9.0, 1.0, 0.25], dtype=torch.float64)
    a = _with_moments(torch.zeros(3, dtype=torch.float64), torch.diag(variances_a), 200, 5)
    b = _with_moments(torch.ones(3, dtype=torch.float64), torch.diag(variances_b), 200, 6)
    expected = 3.0 + float(((variances_a.sqrt() - variances_b.sqrt()) ** 2).sum())
    assert evaluate.fid(a, b) == pytest.approx(expected, rel=1e-8)


def test_fid_does_not_depend_on_sample_order():
    generator = torch.Generator().manual_seed(7)
    a = torch.randn(200, 8, generator=generator, dtype=torch.float64)
    b = torch.randn(150, 8, generator=generator, dtype=torch.float64) * 1.5 + 0.3
    shuffled = b[torch.randperm(150, generator=generator)]
    assert evaluate.fid(a, b) == pytest.approx(evaluate.fid(a, shuffled), rel=1e-10)
    assert evaluate.fid(a, b) == pytest.approx(evaluate.fid(b, a), rel=1e-8)


def test_kid_is_unbiased_near_zero_for_one_distribution_and_positive_for_two():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(400, 8, generator=generator, dtype=torch.float64)
    b = torch.randn(400, 8, generator=generator, dtype=torch.float64)
    shifted = b + 1.0
    same, same_std = evaluate.kid(a, b, subsets=50, subset_size=200)
    different, _ = evaluate.kid(a, shifted, subsets=50, subset_size=200)
    assert abs(same) < 3 * same_std + 1e-3  # unbiased: fluctuates around 0 (it can be negative)
    assert different > 10 * abs(same)


def test_kid_matches_a_brute_force_unbiased_mmd_on_one_full_subset():
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(30, 4, generator=generator, dtype=torch.float64)
    b = torch.randn(30, 4, generator=generator, dtype=torch.float64) + 0.5
    mean, std = evaluate.kid(a, b, subsets=3, subset_size=30)  # every subset is the whole (permuted) set

    def kernel(x, y):
        return (x @ y.T / x.shape[1] + 1.0) ** 3

    m = 30
    k_aa, k_bb, k_ab = kernel(a, a), kernel(b, b), kernel(a, b)
    expected = ((k_aa.sum() - k_aa.trace()) + (k_bb.sum() - k_bb.trace())) / (m * (m - 1)) - 2 * k_ab.mean()
    assert mean == pytest.approx(float(expected), rel=1e-9)
    assert std < 1e-9


def _brute_force_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(points):
        out = []
        for i, p in enumerate(points):
            others = sorted(math.dist(p, q) for j, q in enumerate(points) if j != i)
            out.append(others[k - 1])
        return out

    def coverage(queries, support, support_radii):
        hits = [any(math.dist(q, s) <= r for s, r in zip(support, support_radii)) for q in queries]
        return sum(hits) / len(hits)

    return coverage(fake, real, radii(real)), coverage(real, fake, radii(fake))


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_match_a_brute_force_computation(k):
    generator = torch.Generator().manual_seed(k)
    real = torch.randn(40, 2, generator=generator, dtype=torch.float64)
    fake = torch.randn(35, 2, generator=generator, dtype=torch.float64) * 0.5 + torch.tensor([2.0, 0.0])
    precision, recall = evaluate.precision_recall(real, fake, k=k, chunk=7)
    expected = _brute_force_precision_recall(real.tolist(), fake.tolist(), k)
    assert (precision, recall) == pytest.approx(expected, abs=1e-12)
    assert 0.0 < precision < 1.0 and 0.0 < recall < 1.0


def test_precision_recall_on_constructed_sets():
    # real: a tight grid around the origin; fake: half on the grid, half far away
    grid = torch.tensor([[x, y] for x in range(5) for y in range(5)], dtype=torch.float64)
    fake = torch.cat([grid[:10] + 0.1, grid[:10] + 100.0])
    precision, recall = evaluate.precision_recall(grid, fake, k=3)
    assert precision == pytest.approx(0.5)
    # the far fake points form their own large-radius cluster, so recall counts grid points near fakes only
    expected = _brute_force_precision_recall(grid.tolist(), fake.tolist(), 3)[1]
    assert recall == pytest.approx(expected)
    assert evaluate.precision_recall(grid, grid, k=3) == (1.0, 1.0)


def test_inception_score_bounds():
    uniform = torch.zeros(50, 10)
    assert evaluate.inception_score(uniform)[0] == pytest.approx(1.0)
    confident = torch.full((40, 4), -1e4)
    confident[torch.arange(40), torch.arange(40) % 4] = 1e4
    assert evaluate.inception_score(confident)[0] == pytest.approx(4.0)
    one_class = torch.full((40, 4), -1e4)
    one_class[:, 2] = 1e4
    assert evaluate.inception_score(one_class)[0] == pytest.approx(1.0)


def test_inception_score_matches_torchmetrics():
    from torchmetrics.image.inception import InceptionScore

    logits = torch.randn(60, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3

    class Logits(torch.nn.Module):
        def forward(self, x):
            return x

    metric = InceptionScore(feature=Logits(), splits=3)
    metric.update(logits)
    with (
        torch.random.fork_rng()
    ):  # torchmetrics shuffles before splitting; splits of one set use the same order
        torch.manual_seed(0)
        order = torch.randperm(60)
        torch.manual_seed(0)
        expected_mean, _ = metric.compute()
    ours, _ = evaluate.inception_score(logits[order], splits=3)
    assert ours == pytest.approx(float(expected_mean), rel=1e-6)


def test_class_accuracy_counts_matching_argmax():
    logits = torch.eye(4)[[0, 1, 2, 3, 0]]
    assert evaluate.class_accuracy(logits, torch.tensor([0, 1, 2, 0, 0])) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="labels"):
        evaluate.class_accuracy(logits, torch.tensor([0, 1]))


def test_bad_inputs_name_the_expected_shapes():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        evaluate.fid(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="at least 4"):
        evaluate.precision_recall(torch.zeros(3, 2), torch.zeros(9, 2), k=3)


def test_has_protocol_requires_every_field():
    protocol = evaluate.Protocol(
        "m.digits", "ab", "ddim", 50, 1.0, 100, "digits:test", "digits_classifier", "cd", 0
    )
    assert evaluate.has_protocol({"protocol": protocol.to_dict()})
    partial = {**protocol.to_dict(), "extractor_sha256": ""}
    assert not evaluate.has_protocol({"protocol": partial})
    assert not evaluate.has_protocol({"fid": 1.0})


def test_compare_reports_every_metric_for_a_classifier_extractor():
    torch.manual_seed(0)
    extractor = DigitsClassifier()
    images = torch.rand(40, 1, 8, 8) * 2 - 1
    real = evaluate.extract(extractor, images, batch_size=16)
    assert real.features.dtype == torch.float64 and real.features.shape == (40, extractor.num_features)
    metrics = evaluate.compare(real, real, fake_labels=real.logits.argmax(1), kid_subsets=5)
    assert metrics["fid"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["precision"] == metrics["recall"] == 1.0
    assert metrics["class_accuracy"] == 1.0
    assert set(metrics) == {
        "fid",
        "kid",
        "kid_std",
        "precision",
        "recall",
        "inception_score",
        "class_accuracy",
    }


@pytest.mark.parametrize("data", ["digits", "mnist"])
def test_shipped_classifier_reaches_its_card_accuracy_on_the_test_split(data):

    config = json.loads((classifier_dir(data) / "config.json").read_text())
    model = load_digits_classifier() if data == "digits" else load_classifier(data)
    assert model.sha256 == config["sha256"] and model.name == f"{data}_classifier"
    assert config["data"] == data if "data" in config else data == "digits"
    test = load_dataset(data, split="test")
    features = evaluate.extract(model, test.images)
    measured = evaluate.class_accuracy(features.logits, test.labels)
    # the card's number is the test-split accuracy (one image of slack for batch-size rounding)
    assert abs(measured - config["test_accuracy"]) <= 1 / len(test) + 1e-9
    assert measured > 0.95


def test_classifier_for_an_unknown_data_set_is_refused():
    with pytest.raises(ValueError, match="built-in data sets: digits, mnist"):
        load_classifier("cifar10")
