"""Timestep samplers (clustering/samplers.py): their laws, the curriculum's pacing, and the wiring into
the model config, `model.loss` / `model.backward` and the trainer (argument, checkpointed state)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from scipy import stats
from zoo.clustering import TaskClusters, build_sampler, list_samplers

import zoo
from tests.trainkit import TINY, tiny_config
from zoo import clustering
from zoo.config import config_from_name
from zoo.train import TrainConfig, Trainer
from zoo.train.distributed import DistributedContext
from zoo.train.trainer import add_train_arguments, config_from_args
from zoo.validate import ConfigError, check_recipe, validate_config

T = 1000
SMALL = {"input_size": 8, "in_channels": 1, "num_classes": 10}


def _clusters(k: int = 5, num_timesteps: int = T) -> TaskClusters:
    bounds = [round(i * num_timesteps / k) for i in range(k + 1)]
    return TaskClusters([(bounds[i], bounds[i + 1] - 1) for i in range(k)], num_timesteps)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _chi_square_pvalue(draws: torch.Tensor, pmf: torch.Tensor, bins: int = 50) -> float:
    """Pearson chi-square of the draws against the exact pmf, over `bins` equal-probability task bins."""
    counts = torch.bincount(draws, minlength=len(pmf)).double()
    cdf = torch.cumsum(pmf, 0)
    edges = torch.searchsorted(cdf, torch.linspace(0, 1, bins + 1)[1:-1].double()).tolist()
    observed, expected, start = [], [], 0
    for end in [*edges, len(pmf) - 1]:
        if end + 1 > start:
            observed.append(float(counts[start : end + 1].sum()))
            expected.append(float(pmf[start : end + 1].sum()) * len(draws))
            start = end + 1
    observed, expected = torch.tensor(observed), torch.tensor(expected)
    assert float(expected.min()) > 5  # the chi-square approximation holds
    statistic = float(((observed - expected) ** 2 / expected).sum())
    return float(stats.chi2.sf(statistic, len(observed) - 1))


# ------------------------------------------------------------------------------ registry


def test_registry_lists_the_samplers_and_a_miss_is_key_and_value_error():
    assert list_samplers() == ["curriculum", "lognorm", "stratified", "uniform"]
    with pytest.raises(KeyError) as caught:
        build_sampler("lognormal", _clusters())
    assert isinstance(caught.value, ValueError)
    assert "lognorm" in str(caught.value) and "Did you mean" in str(caught.value)
    with pytest.raises(ValueError, match="lower-case identifiers"):
        clustering.register_sampler("Bad-Name")
    with pytest.raises(ValueError, match="already registered"):
        clustering.register_sampler("uniform")(type("Other", (clustering.TimestepSampler,), {}))
    assert build_sampler(None, _clusters()).name == "stratified"


def test_bad_options_are_clear_errors_before_any_draw():
    with pytest.raises(ValueError, match="lognorm scale must be > 0"):
        build_sampler("lognorm", _clusters(), scale=0.0)
    with pytest.raises(ValueError, match="finite number"):
        build_sampler("lognorm", _clusters(), location=float("nan"))
    with pytest.raises(TypeError):
        build_sampler("uniform", _clusters(), scale=1.0)
    with pytest.raises(ValueError, match="permutation"):
        build_sampler("curriculum", _clusters(3), order=[0, 0, 1])
    with pytest.raises(ValueError, match=r"start must be in \[1, 3\]"):
        build_sampler("curriculum", _clusters(3), start=4)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        build_sampler("uniform", _clusters())(0)


# ------------------------------------------------------------------------------ laws


@pytest.mark.parametrize("batch", [10, 13, 3])
def test_stratified_is_todays_draws_bit_for_bit(batch):
    clusters = _clusters()
    sampler = build_sampler("stratified", clusters)
    assert not sampler.allow_empty and sampler.equal_counts and sampler.config() == {}
    for seed in range(3):
        assert torch.equal(
            sampler(batch, generator=_generator(seed)),
            clusters.sample_timesteps(batch, generator=_generator(seed)),
        )


def test_uniform_matches_its_pmf():
    sampler = build_sampler("uniform", _clusters())
    draws = sampler(200_000, generator=_generator(1))
    assert draws.dtype == torch.long and int(draws.min()) == 0 and int(draws.max()) == T - 1
    pmf = torch.full((T,), 1.0 / T, dtype=torch.float64)
    assert _chi_square_pvalue(draws, pmf) > 1e-3
    # the test can fail: the first half of the tasks twice as likely is rejected
    skewed = torch.cat([draws, torch.randint(0, T // 2, (100_000,), generator=_generator(2))])
    assert _chi_square_pvalue(skewed, pmf) < 1e-6


def _logit_normal_pmf(m: float, s: float, steps: int = T) -> torch.Tensor:
    """Independent of the sampler's own pmf(): scipy's normal CDF at the logits of the task edges."""
    edges = torch.arange(steps + 1, dtype=torch.float64) / steps
    logits = torch.log(edges / (1 - edges))  # -inf and +inf at the ends
    return torch.from_numpy(stats.norm.cdf(((logits - m) / s).numpy())).diff()


@pytest.mark.parametrize(("location", "scale"), [(0.0, 1.0), (1.0, 0.5), (-0.5, 1.6)])
def test_lognorm_matches_the_exact_discrete_pmf(location, scale):
    sampler = build_sampler("lognorm", _clusters(), location=location, scale=scale)
    assert sampler.config() == {"location": location, "scale": scale}
    pmf = _logit_normal_pmf(location, scale)
    assert torch.allclose(sampler.pmf(), pmf, atol=1e-12) and math.isclose(float(pmf.sum()), 1.0)
    draws = sampler(200_000, generator=_generator(3))
    assert _chi_square_pvalue(draws, pmf) > 1e-3
    # and a neighbouring law is rejected: the same draws against location + 0.05
    assert _chi_square_pvalue(draws, _logit_normal_pmf(location + 0.05, scale)) < 1e-6
    # KS against the continuous law of u, on the draws' task index (u in [t / T, (t + 1) / T))
    u = (draws.double() + torch.rand(len(draws), generator=_generator(4), dtype=torch.float64)) / T
    z = torch.log(u / (1 - u))
    assert stats.kstest(z.numpy(), stats.norm(location, scale).cdf).pvalue > 1e-3


def test_lognorm_location_and_scale_move_the_mean_as_the_formula_says():
    tasks = torch.arange(T, dtype=torch.float64)
    means = {}
    for location in (-1.0, 0.0, 1.0):
        sampler = build_sampler("lognorm", _clusters(), location=location, scale=1.0)
        exact = float((sampler.pmf() * tasks).sum())
        draws = sampler(100_000, generator=_generator(5)).double()
        assert abs(float(draws.mean()) - exact) < 4 * float(draws.std()) / math.sqrt(len(draws))
        # median task = floor(sigmoid(m) T)
        assert abs(float(draws.median()) - math.floor(T / (1 + math.exp(-location)))) <= 3
        means[location] = exact
    assert means[-1.0] < means[0.0] < means[1.0]  # more location = more noise = higher tasks
    assert abs(means[0.0] - (T - 1) / 2) < 1e-6  # symmetric law about the middle
    assert abs(means[1.0] + means[-1.0] - (T - 1)) < 1e-6  # m -> -m mirrors the tasks
    # a small scale concentrates on floor(sigmoid(m) T); the standard deviation grows with the scale
    narrow = build_sampler("lognorm", _clusters(), location=1.0, scale=1e-3)
    assert set(narrow(1000, generator=_generator(6)).tolist()) <= {730, 731}
    spreads = [
        float(((build_sampler("lognorm", _clusters(), scale=s).pmf()) * (tasks - 499.5) ** 2).sum())
        for s in (0.5, 1.0, 2.0)
    ]
    assert spreads[0] < spreads[1] < spreads[2]


def test_draws_respect_generator_and_device():
    for name in list_samplers():
        sampler = build_sampler(name, _clusters())
        first = sampler(64, generator=_generator(7), device="cpu")
        again = build_sampler(name, _clusters())(64, generator=_generator(7))
        assert first.dtype == torch.long and first.shape == (64,) and torch.equal(first, again), name
        assert 0 <= int(first.min()) and int(first.max()) < T


# ------------------------------------------------------------------------------ curriculum


def test_curriculum_unlocks_clusters_easy_to_hard_under_its_patience():
    clusters = _clusters(4)
    sampler = build_sampler("curriculum", clusters, patience=3, smoothing=0.0, min_delta=0.0)
    assert sampler.unlocked == [3] and sampler.equal_counts and sampler.allow_empty
    assert set(clusters.cluster_of(sampler(40, generator=_generator())).tolist()) == {3}
    stages = []
    # improving losses keep the stage; three steps without a new best unlock the next cluster
    for loss in [1.0, 0.9, 0.8, 0.8, 0.85, 0.8]:
        stages.append(sampler.after_step([0.0, 0.0, 0.0, loss])["curriculum_stage"])
    assert stages == [1, 1, 1, 1, 1, 2] and sampler.unlocked == [2, 3]
    drawn = clusters.cluster_of(sampler(40, generator=_generator()))
    assert torch.equal(torch.bincount(drawn, minlength=4), torch.tensor([0, 0, 20, 20]))
    # a new stage starts its statistics afresh (the first step sets its best), then the same patience;
    # only the unlocked clusters count: the locked ones' (zero) losses are ignored
    for _ in range(3):
        sampler.after_step([0.0, 0.0, 5.0, 5.0])
    assert sampler.unlocked == [2, 3]
    sampler.after_step([0.0, 0.0, 5.0, 5.0])
    assert sampler.unlocked == [1, 2, 3]
    for _ in range(4):
        sampler.after_step([0.0, 7.0, 7.0, 7.0])
    assert sampler.unlocked == [0, 1, 2, 3] and sampler.after_step([1.0] * 4) == {"curriculum_stage": 4}
    # all unlocked and K divides B: exactly stratified's numbers
    assert torch.equal(
        sampler(40, generator=_generator(8)), clusters.sample_timesteps(40, generator=_generator(8))
    )


def test_curriculum_min_delta_smoothing_and_stage_cap():
    sampler = build_sampler("curriculum", _clusters(3), patience=2, smoothing=0.5, min_delta=0.1)
    sampler.after_step([0, 0, 1.0])  # smoothed 1.0, best 1.0
    sampler.after_step([0, 0, 0.95])  # smoothed 0.975: not 10 % better
    assert sampler.stage == 1 and sampler.wait == 1 and math.isclose(sampler.smoothed, 0.975)
    sampler.after_step([0, 0, 0.1])  # smoothed 0.5375 < 0.9: a new best
    assert sampler.stage == 1 and sampler.wait == 0
    sampler.after_step([0, 0, float("nan")])  # a skipped step is no evidence
    assert sampler.stage_steps == 3
    capped = build_sampler("curriculum", _clusters(3), patience=1000, max_stage_steps=4, order=[0, 1, 2])
    for step in range(8):
        capped.after_step([1.0 - 0.1 * step] * 3)  # always improving: only the cap moves on
    assert capped.unlocked == [0, 1, 2]


def test_curriculum_equal_counts_on_every_process_whatever_the_generator():
    clusters = _clusters(5)
    ranks = [build_sampler("curriculum", clusters, start=3) for _ in range(2)]
    for draw in range(5):
        counts = [
            torch.bincount(clusters.cluster_of(s(7, generator=_generator(10 * rank + draw))), minlength=5)
            for rank, s in enumerate(ranks)
        ]
        assert torch.equal(counts[0], counts[1]) and counts[0][:2].sum() == 0
        assert sorted(counts[0][2:].tolist()) == [2, 2, 3]  # 7 over 3 clusters; the extra one rotates
    total = torch.zeros(5, dtype=torch.long)
    for _ in range(3):
        total += torch.bincount(clusters.cluster_of(ranks[0](7, generator=_generator())), minlength=5)
    assert total[2:].tolist() == [7, 7, 7]


def test_curriculum_resumes_from_its_state():
    losses = [[0.0, 0.0, 1.0 - 0.01 * (i % 4)] for i in range(30)]
    whole = build_sampler("curriculum", _clusters(3), patience=3, smoothing=0.5)
    for step, loss in enumerate(losses):
        whole(5, generator=_generator(step))
        whole.after_step(loss)
    first = build_sampler("curriculum", _clusters(3), patience=3, smoothing=0.5)
    for step, loss in enumerate(losses[:13]):
        first(5, generator=_generator(step))
        first.after_step(loss)
    state = json.loads(json.dumps(first.state_dict()))
    second = build_sampler("curriculum", _clusters(3), patience=3, smoothing=0.5)
    second.load_state_dict(state)
    for step, loss in enumerate(losses[13:], start=13):
        second(5, generator=_generator(step))
        second.after_step(loss)
    assert second.state_dict() == whole.state_dict() and whole.stage > 1
    assert torch.equal(second(5, generator=_generator(99)), whole(5, generator=_generator(99)))
    with pytest.raises(ValueError, match="curriculum state must hold exactly"):
        second.load_state_dict({"stage": 2})
    with pytest.raises(ValueError, match="has no state"):
        build_sampler("uniform", _clusters()).load_state_dict(state)


# ------------------------------------------------------------------------------ config and model


def test_config_section_written_only_for_another_sampler():
    assert "timestep_sampler" not in config_from_name("dit_t_nash_k5")
    assert "timestep_sampler" not in config_from_name("dit_t_nash_k5", timestep_sampler="stratified")
    config = config_from_name(
        "dit_t_nash_k5", timestep_sampler="lognorm", timestep_sampler_options={"location": 0.5}
    )
    assert config["timestep_sampler"] == {"name": "lognorm", "location": 0.5}
    model = zoo.create("dit_t_nash_k5", **TINY, **SMALL, timestep_sampler="lognorm")
    assert model.config["timestep_sampler"] == {"name": "lognorm", "location": 0.0, "scale": 1.0}
    assert model.timestep_sampler.name == "lognorm"
    default = zoo.create("dit_t_nash_k5", **TINY, **SMALL)
    assert default.timestep_sampler.name == "stratified" and "timestep_sampler" not in default.config
    plain = zoo.create("dit_t_nash_k5", **TINY, **SMALL, timestep_sampler="stratified")
    assert "timestep_sampler" not in plain.config


def test_validation_of_the_section(tmp_path):
    config = config_from_name("dit_t_nash_k5", timestep_sampler="uniform")
    config.pop("_affinity")
    assert validate_config(config, "c.json") is config
    for section, message in [
        ({"name": "lognormal"}, r"timestep_sampler.name: expected one of \['curriculum'"),
        ({"name": 3}, "timestep_sampler.name: expected a non-empty string"),
        ("uniform", "timestep_sampler: expected an object or null"),
        ({"name": "lognorm", "scale": -1}, "lognorm scale must be > 0"),
        ({"name": "curriculum", "start": 6}, r"start must be in \[1, 5\]"),
        ({"name": "stratified", "scale": 1}, "timestep_sampler"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate_config({**config, "timestep_sampler": section}, "c.json")
    with pytest.raises(ConfigError, match="lognorm scale"):
        check_recipe(
            zoo.registry.parse_name("dit_t_nash_k5"),
            {"timestep_sampler": "lognorm", "timestep_sampler_options": {"scale": 0}},
        )
    # a saved model with another sampler rebuilds with it
    model = zoo.create("dit_t_uw_k5", **TINY, **SMALL, timestep_sampler="curriculum")
    model.save_pretrained(tmp_path / "m")
    again = zoo.create(f"local-dir:{tmp_path / 'm'}")
    assert again.timestep_sampler.name == "curriculum" and again.config == model.config


@pytest.mark.parametrize("balancer", ["nash", "uw", "linear", "imtl", "pcgrad", "famo"])
@pytest.mark.parametrize("name", ["stratified", "uniform", "lognorm", "curriculum"])
def test_every_sampler_composes_with_a_k5_mtl_recipe(name, balancer):
    torch.manual_seed(0)
    model = zoo.create(f"dit_t_{balancer}_k5", **TINY, **SMALL, timestep_sampler=name)
    x0, y = torch.randn(10, 1, 8, 8), torch.arange(10)
    out = model.loss(x0, y, generator=_generator(0))
    counts = model.clusters.counts(out.t)
    if name == "curriculum":  # only the easiest (most noise) cluster at the start
        assert counts.tolist() == [0, 0, 0, 0, 10]
    elif name == "stratified":
        assert counts.tolist() == [2] * 5
    empty = counts == 0
    assert torch.all(out.cluster_losses[empty] == 0) and torch.all(out.cluster_losses[~empty] > 0)
    logs = model.backward(out)
    grads = [p.grad for p in model.net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    for value in logs.values():
        if torch.is_tensor(value):
            assert torch.isfinite(value).all(), (name, balancer, logs)
    if balancer == "uw":
        assert torch.isfinite(model.balancer.log_vars.grad).all()


def test_uniform_small_batch_with_empty_clusters_under_nash_and_uw():
    """A batch of 3 over 5 clusters leaves two empty: their loss is 0 (not NaN) and gets no gradient."""
    for balancer in ("nash", "uw"):
        torch.manual_seed(0)
        model = zoo.create(f"dit_t_{balancer}_k5", **TINY, **SMALL, timestep_sampler="uniform")
        out = model.loss(torch.randn(3, 1, 8, 8), torch.arange(3), generator=_generator(1))
        empty = model.clusters.counts(out.t) == 0
        assert int(empty.sum()) >= 2 and torch.isfinite(out.cluster_losses).all()
        model.backward(out)
        assert all(torch.isfinite(p.grad).all() for p in model.net.parameters() if p.grad is not None)
    # stratified keeps today's error for a batch that cannot cover the clusters
    strict = zoo.create("dit_t_nash_k5", **TINY, **SMALL)
    with pytest.raises(ValueError, match="have no samples"):
        strict.loss(torch.randn(3, 1, 8, 8), torch.arange(3), generator=_generator(1))


# ------------------------------------------------------------------------------ trainer


def test_train_argument_and_curriculum_state_in_checkpoints(tmp_path):
    parser = add_train_arguments(__import__("argparse").ArgumentParser())
    args = parser.parse_args(["dit_t_uw_k5", "--timestep-sampler", "curriculum"])
    assert config_from_args(args).timestep_sampler == "curriculum"
    with pytest.raises(SystemExit):
        parser.parse_args(["dit_t_uw_k5", "--timestep-sampler", "lognormal"])
    options = {"timestep_sampler_options": {"patience": 1, "smoothing": 0.0, "min_delta": 0.5}}
    settings = {"model": "dit_t_k5", "timestep_sampler": "curriculum", "overrides": {**TINY, **options}}
    whole = Trainer(tiny_config(tmp_path, steps=6, out=str(tmp_path / "whole"), **settings))
    assert "--timestep-sampler curriculum" in whole.config.to_command()
    whole.fit()
    stages = [r["curriculum_stage"] for r in map(json.loads, (tmp_path / "whole" / "log.jsonl").open())]
    assert stages == sorted(stages) and stages[-1] > 1  # unlocked in order during the run
    first = Trainer(tiny_config(tmp_path, steps=3, out=str(tmp_path / "split"), **settings))
    first.fit()
    second = Trainer(tiny_config(tmp_path, steps=6, out=str(tmp_path / "split"), resume=True, **settings))
    second.fit()
    split = [r["curriculum_stage"] for r in map(json.loads, (tmp_path / "split" / "log.jsonl").open())]
    assert split == stages
    assert second.model.timestep_sampler.state_dict() == whole.model.timestep_sampler.state_dict()
    for mine, theirs in zip(whole.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(mine, theirs)
    # resuming with another sampler is another model config: refused
    with pytest.raises(ValueError, match="timestep_sampler"):
        Trainer(
            tiny_config(tmp_path, steps=8, out=str(tmp_path / "split"), resume=True, model="dit_t_k5")
        ).fit()


def test_trainer_refuses_unequal_counts_with_several_processes(tmp_path):
    two = DistributedContext(rank=0, world_size=2)
    with pytest.raises(ValueError, match="'nash' balancer needs equal counts"):
        Trainer(tiny_config(tmp_path, model="dit_t_nash_k5", timestep_sampler="uniform"), context=two)
    model = zoo.create("dit_t_nash_k5", **TINY, **SMALL)
    with pytest.raises(ValueError, match="the model given samples with 'stratified'"):
        Trainer(
            TrainConfig("dit_t_nash_k5", out=str(tmp_path / "x"), timestep_sampler="uniform"), model=model
        )
    # FAMO weights a cluster by 1 / (loss + eps): an empty cluster would take all the weight
    with pytest.raises(ValueError, match="FAMO weights a cluster"):
        Trainer(tiny_config(tmp_path, model="dit_t_famo_k5", timestep_sampler="curriculum"))
    with pytest.warns(UserWarning, match="empty cluster's log-variance"):
        Trainer(tiny_config(tmp_path, model="dit_t_uw_k5", timestep_sampler="uniform"))
    # what passes: equal counts (curriculum) with any balancer, or unequal ones with linear weighting
    for recipe, sampler in (("dit_t_nash_k5", "curriculum"), ("dit_t_k5", "uniform")):
        trainer = Trainer(tiny_config(tmp_path, model=recipe, timestep_sampler=sampler))
        trainer.context = two
        trainer._check_timestep_sampler()
