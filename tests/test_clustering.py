"""Interval clustering (exact DP vs brute force, the authors' legacy DP), stratified sampling, reduce()."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from zoo.clustering import TaskClusters, interval_clustering
from zoo.clustering import objectives as objectives_module

from zoo import clustering


def linear_snr(num_timesteps: int = 1000) -> np.ndarray:
    """Raw SNR of the DDPM linear schedule, built independently of zoo.diffusion."""
    betas = np.linspace(1e-4, 0.02, num_timesteps, dtype=np.float64)
    alpha_bar = np.cumprod(1.0 - betas)
    return alpha_bar / (1.0 - alpha_bar)


def direct_cost(
    objective: str, lo: int, hi: int, snr: np.ndarray | None, affinity: np.ndarray | None
) -> float:
    """Interval cost straight from the definition, one term at a time (no prefix sums)."""
    if objective == "affinity":
        centre = math.floor((lo + hi + 1) / 2)
        return -sum(float(affinity[centre, t]) for t in range(lo, hi + 1))
    if lo == hi:
        return 0.0
    value = {
        "snr": lambda t: float(snr[t]),
        "logsnr": lambda t: math.log(snr[t]),
        "timestep": float,
    }[objective]
    centre = round((lo + hi + 1) / 2)  # Python's round is half to even
    return sum(abs(value(t) - value(centre)) for t in range(lo, hi + 1))


def all_partitions(num_timesteps: int, k: int):
    """Every split of 0..T-1 into k non-empty contiguous intervals."""
    for cuts in itertools.combinations(range(1, num_timesteps), k - 1):
        bounds = (0, *cuts, num_timesteps)
        yield [(bounds[i], bounds[i + 1] - 1) for i in range(k)]


def random_monotone_snr(rng: np.random.Generator, num_timesteps: int, with_ties: bool) -> np.ndarray:
    values = np.sort(rng.exponential(3.0, size=num_timesteps) + 1e-3)[::-1]
    if with_ties:
        values = np.round(values, 0) + 0.5  # plateaus exercise exactly-zero interval costs
    return values.copy()


def random_affinity(rng: np.random.Generator, num_timesteps: int) -> np.ndarray:
    matrix = rng.uniform(-1.0, 1.0, size=(num_timesteps, num_timesteps))
    matrix = (matrix + matrix.T) / 2
    np.fill_diagonal(matrix, 1.0)
    return matrix


# --- exact DP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["snr", "logsnr", "timestep", "affinity"])
def test_dp_is_optimal_against_brute_force(objective):
    rng = np.random.default_rng(0)
    checked = 0
    for num_timesteps in range(1, 11):
        for k in range(1, min(4, num_timesteps) + 1):
            for trial in range(2):
                snr = random_monotone_snr(rng, num_timesteps, with_ties=trial == 1)
                affinity = random_affinity(rng, num_timesteps)
                clusters = interval_clustering(
                    k, objective, snr=snr, affinity=affinity, num_timesteps=num_timesteps
                )
                costs = {
                    tuple(p): sum(direct_cost(objective, lo, hi, snr, affinity) for lo, hi in p)
                    for p in all_partitions(num_timesteps, k)
                }
                best = min(costs.values())
                assert clusters.k == k
                ours = costs[tuple(clusters.intervals)]
                assert ours == pytest.approx(best, rel=1e-9, abs=1e-9)
                assert clusters.objective_value == pytest.approx(ours, rel=1e-9, abs=1e-9)
                checked += 1
    assert checked == 2 * sum(min(4, t) for t in range(1, 11))


def test_dp_picks_singletons_when_they_are_optimal():
    # Three well separated plateaus plus one outlier at t=0: the optimum isolates t=0.
    snr = np.array([100.0, 10.0, 10.0, 10.0, 5.0, 5.0, 5.0, 1.0, 1.0, 1.0])
    clusters = interval_clustering(4, "snr", snr=snr, num_timesteps=10)
    assert clusters.intervals == [(0, 0), (1, 3), (4, 6), (7, 9)]
    assert clusters.objective_value == 0.0


def test_worked_example_exact():
    clusters = interval_clustering(5, "snr", snr=linear_snr())
    assert clusters.intervals == [(0, 0), (1, 1), (2, 6), (7, 21), (22, 999)]
    assert clusters.objective_value == pytest.approx(8083, abs=1.0)
    direct = sum(direct_cost("snr", lo, hi, linear_snr(), None) for lo, hi in clusters.intervals)
    assert clusters.objective_value == pytest.approx(direct, rel=1e-10)
    assert clusters.reported_intervals is None


def test_worked_example_legacy():
    clusters = interval_clustering(5, "snr", snr=linear_snr(), legacy=True)
    assert clusters.intervals == [(0, 1), (2, 3), (4, 8), (9, 27), (28, 999)]
    assert clusters.reported_intervals == [(0, 0), (1, 2), (3, 7), (8, 26), (27, 1000)]
    assert clusters.objective_value == pytest.approx(11982, abs=1.0)
    assert clusters.legacy


def authors_recurrence(costs: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The released ANT DP as described in issue 4, written as plain loops: split points L in j..i-1,
    zero-total candidates invalid, first-index argmin; returns the partition it really picks."""
    n = costs.shape[0]
    best = np.zeros((n, k))
    split = np.zeros((n, k), dtype=int)
    for j in range(k):
        for i in range(n):
            if j == 0:
                best[i, j] = costs[0, i]
            elif i >= j:
                items = [math.inf] * n
                for split_point in range(j, i):
                    total = best[split_point, j - 1] + costs[split_point + 1, i]
                    items[split_point] = math.inf if total == 0 else total
                best[i, j] = min(items)
                split[i, j] = items.index(best[i, j])
    ends = [n - 1]
    for j in range(k - 1, 0, -1):
        ends.append(split[ends[-1], j])
    ends = ends[::-1]
    return [(0 if i == 0 else ends[i - 1] + 1, ends[i]) for i in range(k)]


@pytest.mark.parametrize("objective", ["snr", "timestep", "affinity"])
def test_legacy_matches_the_authors_recurrence(objective):
    rng = np.random.default_rng(1)
    for num_timesteps in range(3, 12):
        for k in range(1, min(4, num_timesteps - 1) + 1):
            snr = random_monotone_snr(rng, num_timesteps, with_ties=False)
            affinity = random_affinity(rng, num_timesteps)
            costs = np.full((num_timesteps, num_timesteps), math.inf)
            for lo in range(num_timesteps):
                for hi in range(lo, num_timesteps):
                    costs[lo, hi] = direct_cost(objective, lo, hi, snr, affinity)
            legacy = interval_clustering(
                k, objective, snr=snr, affinity=affinity, num_timesteps=num_timesteps, legacy=True
            )
            expected = authors_recurrence(costs, k)
            assert legacy.intervals == expected
            assert legacy.intervals[0][1] >= 1 or k == 1  # quirk 1: no singleton first cluster
            cut_ends = [hi for _, hi in expected[:-1]]
            assert legacy.reported_intervals == [
                ((0, *cut_ends)[i], cut_ends[i] - 1 if i < k - 1 else num_timesteps) for i in range(k)
            ]
            exact = interval_clustering(k, objective, snr=snr, affinity=affinity, num_timesteps=num_timesteps)
            assert exact.objective_value <= legacy.objective_value + 1e-9


def test_legacy_rejects_zero_cost_candidates():
    # Constant SNR: every candidate costs exactly 0, so the authors' DP finds nothing valid.
    with pytest.raises(ValueError, match=r"legacy DP .* found no partition of 6 timesteps into 2"):
        interval_clustering(2, "snr", snr=np.ones(6), num_timesteps=6, legacy=True)
    assert interval_clustering(2, "snr", snr=np.ones(6), num_timesteps=6).objective_value == 0.0


def test_timestep_objective_gives_near_equal_intervals():
    clusters = interval_clustering(8, "timestep")
    sizes = [hi - lo + 1 for lo, hi in clusters.intervals]
    assert max(sizes) - min(sizes) <= 0.05 * 1000 / 8


def test_uniform_intervals():
    assert interval_clustering(3, "uniform").intervals == [(0, 332), (333, 665), (666, 999)]
    assert interval_clustering(5, "uniform").intervals == [(200 * i, 200 * i + 199) for i in range(5)]
    clusters = interval_clustering(7, "uniform", num_timesteps=20)
    sizes = [hi - lo + 1 for lo, hi in clusters.intervals]
    assert sum(sizes) == 20 and max(sizes) - min(sizes) <= 1
    assert clusters.objective_value is None


def test_logsnr_separates_noise_levels_more_evenly_than_raw_snr():
    snr = linear_snr()
    raw = interval_clustering(5, "snr", snr=snr)
    log = interval_clustering(5, "logsnr", snr=snr)
    assert raw.intervals[-1][1] - raw.intervals[-1][0] > 900  # raw SNR piles everything in one cluster
    assert max(hi - lo + 1 for lo, hi in log.intervals) < 400


def test_dp_accepts_tensors_and_is_fast_enough_to_run_in_tests():
    snr = torch.from_numpy(linear_snr())
    clusters = interval_clustering(8, "logsnr", snr=snr)
    assert clusters.k == 8 and clusters.intervals[-1][1] == 999


def test_register_new_objective_is_one_function():
    name = "test_only_squared_timestep"

    @clustering.register_objective(name)
    def squared(_, num_timesteps):
        """Deviation of t^2 from the centre's."""
        return clustering.monotone_deviation_costs(np.arange(num_timesteps, dtype=np.float64) ** 2)

    try:
        assert name in clustering.list_objectives()
        clusters = interval_clustering(2, name, num_timesteps=6)
        best = min(
            sum(sum(abs(t * t - round((lo + hi + 1) / 2) ** 2) for t in range(lo, hi + 1)) for lo, hi in p)
            for p in all_partitions(6, 2)
        )
        assert clusters.objective_value == pytest.approx(best)
        with pytest.raises(ValueError, match="already registered"):
            clustering.register_objective(name)(squared)
    finally:
        objectives_module._OBJECTIVES.pop(name)


# --- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(k=0, objective="uniform"), "k must be an int >= 1"),
        (dict(k=2.5, objective="uniform"), "k must be an int >= 1"),
        (dict(k=11, objective="timestep", num_timesteps=10), "k must be <= num_timesteps=10"),
        (dict(k=2, objective="nope"), r"unknown clustering objective 'nope'; expected one of \['affinity'"),
        (dict(k=2, objective="snr"), "needs snr="),
        (dict(k=2, objective="affinity", num_timesteps=4), "needs affinity="),
        (dict(k=2, objective="snr", snr=np.ones(999)), "length num_timesteps=1000"),
        (dict(k=2, objective="snr", snr=np.ones((10, 100))), "1-D of length"),
        (dict(k=2, objective="snr", snr=np.array([3.0, np.nan, 1.0]), num_timesteps=3), "NaN"),
        (dict(k=2, objective="snr", snr=np.array([3.0, 4.0, 1.0]), num_timesteps=3), "monotone"),
        (dict(k=2, objective="logsnr", snr=np.array([3.0, 1.0, 0.0]), num_timesteps=3), "strictly positive"),
        (dict(k=2, objective="affinity", affinity=np.ones((3, 4)), num_timesteps=3), "square"),
        (dict(k=2, objective="affinity", affinity=np.ones((4, 4)), num_timesteps=3), r"must be \(3, 3\)"),
        (dict(k=2, objective="affinity", affinity=np.full((3, 3), np.inf), num_timesteps=3), "finite"),
        (dict(k=2, objective="uniform", legacy=True), "legacy=True applies to DP objectives"),
        (dict(k=2, objective="timestep", num_timesteps=0), "num_timesteps must be an int >= 1"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        interval_clustering(**kwargs)


def test_task_clusters_rejects_intervals_that_are_not_a_partition():
    with pytest.raises(ValueError, match="expected one starting at 3"):
        TaskClusters([(0, 2), (4, 9)], 10)
    with pytest.raises(ValueError, match="must end at 9"):
        TaskClusters([(0, 2), (3, 8)], 10)
    with pytest.raises(ValueError, match="expected one starting at 0"):
        TaskClusters([(1, 9)], 10)


# --- TaskClusters: cluster_of, sampling, reduce, serialisation --------------------------------------


@pytest.fixture
def clusters():
    return TaskClusters([(0, 0), (1, 3), (4, 9), (10, 19)], 20, objective="snr", objective_value=1.5)


def test_cluster_of_matches_a_loop(clusters):
    t = torch.arange(20)
    expected = [next(i for i, (lo, hi) in enumerate(clusters.intervals) if lo <= s <= hi) for s in range(20)]
    assert clusters.cluster_of(t).tolist() == expected
    assert clusters.cluster_of(t).dtype == torch.long
    assert clusters.cluster_of(torch.tensor([[3, 4], [19, 0]])).tolist() == [[1, 2], [3, 0]]
    assert int(clusters.cluster_of(5)) == 2
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 19\]"):
        clusters.cluster_of(torch.tensor([0, 20]))
    with pytest.raises(TypeError, match="integer tensor"):
        clusters.cluster_of(torch.tensor([1.0]))


@pytest.mark.parametrize("batch_size", [1, 3, 4, 7, 8, 41])
def test_sample_timesteps_is_stratified(clusters, batch_size):
    t = clusters.sample_timesteps(batch_size, torch.Generator().manual_seed(batch_size))
    assert t.shape == (batch_size,) and t.dtype == torch.long
    assert int(t.min()) >= 0 and int(t.max()) <= 19
    counts = clusters.counts(t)
    base, remainder = divmod(batch_size, clusters.k)
    assert counts.sum() == batch_size
    assert set(counts.tolist()) <= {base, base + 1}
    assert int((counts == base + 1).sum()) == remainder


def test_sample_timesteps_is_uniform_inside_clusters_and_fair_with_the_remainder(clusters):
    generator = torch.Generator().manual_seed(0)
    draws = clusters.sample_timesteps(40_002, generator)
    counts = torch.bincount(draws, minlength=20).double()
    per_cluster = clusters.counts(draws).double()
    for index, (lo, hi) in enumerate(clusters.intervals):
        share = counts[lo : hi + 1] / per_cluster[index]
        assert torch.allclose(share, torch.full_like(share, 1 / (hi - lo + 1)), atol=0.02)
    # 10 = 2 * 4 + 2: each cluster gets one of the 2 extra samples with probability 2/4.
    extra = sum(clusters.counts(clusters.sample_timesteps(10, generator)) - 2 for _ in range(1000)).double()
    assert torch.allclose(extra / 1000.0, torch.full((4,), 0.5, dtype=torch.float64), atol=0.06)


def test_sample_timesteps_is_deterministic_per_generator(clusters):
    first = clusters.sample_timesteps(13, torch.Generator().manual_seed(7))
    again = clusters.sample_timesteps(13, torch.Generator().manual_seed(7))
    other = clusters.sample_timesteps(13, torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        clusters.sample_timesteps(0)


def test_reduce_matches_a_loop_and_its_gradient(clusters):
    generator = torch.Generator().manual_seed(3)
    t = clusters.sample_timesteps(22, generator)
    losses = torch.rand(22, generator=generator, dtype=torch.float64, requires_grad=True)
    reduced = clusters.reduce(losses, t)
    cluster_of = clusters.cluster_of(t)
    expected = torch.stack([losses[cluster_of == i].mean() for i in range(clusters.k)])
    assert torch.allclose(reduced, expected)
    weights = torch.arange(1.0, 5.0, dtype=torch.float64)
    (reduced * weights).sum().backward()
    counts = clusters.counts(t).double()
    assert torch.allclose(losses.grad, weights[cluster_of] / counts[cluster_of])


def test_reduce_reports_empty_clusters(clusters):
    t = torch.tensor([0, 2, 2, 15])
    losses = torch.tensor([1.0, 2.0, 4.0, 8.0], requires_grad=True)
    with pytest.raises(ValueError, match=r"cluster\(s\) 2 \[4, 9\] have no samples"):
        clusters.reduce(losses, t)
    reduced = clusters.reduce(losses, t, allow_empty=True)
    assert reduced.tolist() == [1.0, 3.0, 0.0, 8.0]
    reduced[2].backward()
    assert losses.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="1-D of the same length"):
        clusters.reduce(losses, t[:3])


def test_single_cluster_is_plain_training():
    single = TaskClusters.single(1000)
    assert single.k == 1 and single.intervals == [(0, 999)]
    t = single.sample_timesteps(64, torch.Generator().manual_seed(0))
    losses = torch.rand(64)
    assert torch.allclose(single.reduce(losses, t), losses.mean().reshape(1))
    assert single.cluster_of(t).eq(0).all()


def test_dict_round_trip_through_json():
    for clusters in (
        interval_clustering(5, "snr", snr=linear_snr(), legacy=True),
        interval_clustering(4, "uniform"),
        TaskClusters.single(10),
    ):
        rebuilt = TaskClusters.from_dict(json.loads(json.dumps(clusters.to_dict())))
        assert rebuilt == clusters
        assert (
            rebuilt.intervals == clusters.intervals
            and rebuilt.reported_intervals == clusters.reported_intervals
        )
    with pytest.raises(ValueError, match="k=3 but lists 2 intervals"):
        TaskClusters.from_dict({"k": 3, "intervals": [[0, 4], [5, 9]], "num_timesteps": 10})
    with pytest.raises(ValueError, match=r"lacks keys \['num_timesteps'\]"):
        TaskClusters.from_dict({"intervals": [[0, 9]]})


def test_repr_and_plot(clusters, tmp_path):
    text = repr(clusters)
    assert "k=4" in text and "[4, 9]" in text and "objective='snr'" in text
    path = clusters.plot(tmp_path / "clusters.png", snr=np.linspace(10.0, 0.1, 20))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
