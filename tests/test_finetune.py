"""Warm start of plain pretrained weights in a routed / MTL recipe: step-0 equality, the mask anneal,
balancers at linear weighting, the warning, the trainer's default and checkpoint / resume."""

from __future__ import annotations

import argparse
import json
import math
import warnings

import pytest
import torch

import zoo
from tests import trainkit
from tests.mtl_nets import TinyNet, cluster_losses, make_batch
from tests.trainkit import TINY
from zoo import mtl, routing
from zoo.train import TrainConfig, Trainer, add_train_arguments, config_from_args
from zoo.train.checkpoint import load_latest_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def create_quietly(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return zoo.create(*args, **kwargs)


def tiny_config(tmp_path, **changes) -> TrainConfig:
    return trainkit.tiny_config(tmp_path, **{"sample_steps": 2, **changes})


@pytest.fixture()
def plain_dir(tmp_path):
    """A plain tiny DiT saved in the zoo layout (the pretrained weights of these tests)."""
    torch.manual_seed(3)
    plain = zoo.create("dit_t", input_size=8, in_channels=1, num_classes=10, **TINY)
    with torch.no_grad():  # adaLN-Zero starts with zero gates, where every mask gives the same output
        for param in plain.net.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return plain.save_pretrained(tmp_path / "plain"), plain


# ------------------------------------------------------------------------------------- the masks


def test_strength_interpolates_between_all_ones_and_the_table():
    router = routing.build("dtr", channels=40, num_blocks=3, num_tasks=50, beta=0.6)
    t = torch.arange(50)
    table = router.table(1)
    for strength, expected in ((0.0, torch.ones_like(table)), (1.0, table), (0.25, 1 - 0.25 * (1 - table))):
        router.set_strength(strength)
        assert torch.equal(router.mask(t, block=1), expected)
        assert torch.equal(router.table(1), table)  # the target table never changes
    router.set_strength(0.5)
    assert router.mask(t, dtype=torch.bfloat16).dtype == torch.bfloat16
    for bad in (-0.1, 1.5, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="strength"):
            router.set_strength(bad)


def test_strength_is_in_the_config_only_mid_warm_up_and_rebuilds():
    router = routing.build("random", channels=16, num_blocks=2, num_tasks=20, beta=0.5, seed=4)
    assert "strength" not in router.config()
    router.set_strength(0.3)
    again = routing.build(**router.config())
    assert again.strength == 0.3
    t = torch.arange(20)
    assert torch.equal(again.mask(t, block=1), router.mask(t, block=1))
    assert "strength=0.3" in repr(router)


def test_warmup_schedule_is_monotone_and_reaches_the_target_exactly_at_step_n():
    n = 7
    router = routing.build("dtr", channels=24, num_blocks=1, num_tasks=30, beta=0.5)
    t = torch.arange(30)
    masks = []
    for step in range(n + 3):
        router.set_strength(routing.warmup_strength(step, n))
        masks.append(router.mask(t))
    assert torch.equal(masks[0], torch.ones(30, 24))
    for before, after in zip(masks, masks[1:]):
        assert (after <= before).all()  # channels only close
    assert (masks[n - 1] > router.table()).any()  # still open one step before N
    for step in range(n, n + 3):
        assert torch.equal(masks[step], router.table())  # exactly the DTR table from step N on
    assert routing.warmup_strength(3, 0) == 1.0
    with pytest.raises(ValueError, match="warmup_steps"):
        routing.warmup_strength(1, -1)


# --------------------------------------------------------------------------------- step 0 equality


def test_warm_started_routed_model_equals_the_plain_pretrained_one_at_step_0():
    plain = zoo.create("dit_t.digits", pretrained=True).eval()
    routed = create_quietly("dit_t_dtr_nash_k5", pretrained="dit_t.digits").eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(20, *plain.sample_shape, generator=generator)
    t = torch.randint(0, 1000, (20,), generator=generator)
    y = torch.arange(20) % 10
    with torch.no_grad():
        reference = plain.net(x, t, y)
        assert not torch.allclose(routed.net(x, t, y), reference, atol=1e-2)  # the masks change the function
        routed.apply_routing_warmup(0, 100)
        assert torch.equal(routed.net(x, t, y), reference)
    samples = routed.sample([0, 1, 2, 3], steps=4, sampler="ddim", seed=1)
    assert torch.equal(samples, plain.sample([0, 1, 2, 3], steps=4, sampler="ddim", seed=1))


def test_trainer_warm_start_keeps_model_and_ema_equal_to_the_pretrained_net_at_step_0(tmp_path, plain_dir):
    folder, plain = plain_dir
    trainer = Trainer(tiny_config(tmp_path, steps=6, pretrained=str(folder)))
    assert trainer.routing_warmup == 3  # the default: half the run
    x = torch.randn(6, 1, 8, 8)
    t = torch.tensor([0, 100, 400, 700, 900, 999])
    y = torch.arange(6)
    plain.eval()
    with torch.no_grad():
        reference = plain.net(x, t, y)
        assert torch.equal(trainer.model.net.eval()(x, t, y), reference)
        assert torch.equal(trainer.ema_model.net(x, t, y), reference)
    assert trainer.model.net.router.strength == 0.0


# ------------------------------------------------------------------------------------- balancers


def _linear_and(balancer: mtl.Balancer, k: int = 3):
    """Gradients of the linear balancer and of `balancer` on the same net and batch."""
    batch = make_batch(k, per_cluster=4, seed=1)
    grads = []
    logs = None
    for method in (mtl.build("linear", k), balancer):
        torch.manual_seed(0)
        net = TinyNet().double()
        params = list(net.parameters())
        logs = method.backward(cluster_losses(net, batch, k), params)
        grads.append(torch.cat([p.grad.reshape(-1) for p in params]))
    return grads, logs


def test_uw_neutral_start_equals_linear_weighting():
    uw = mtl.build("uw", 3)
    (linear, default), _ = _linear_and(uw)
    assert torch.allclose(default, 0.5 * linear, rtol=1e-12)  # the default start: half the step
    uw = mtl.build("uw", 3)
    uw.neutral_start()
    (linear, neutral), logs = _linear_and(uw)
    assert torch.allclose(neutral, linear, rtol=1e-6, atol=1e-12)  # s is a float32 parameter
    assert torch.allclose(logs["weights"], torch.ones(3))  # 0.5 exp(-s) = 1: L_i / K, the mean
    assert torch.allclose(uw.log_vars.detach(), torch.full((3,), -math.log(2.0)))


def test_famo_neutral_start_equals_linear_weighting_then_adapts():
    famo = mtl.build("famo", 3)
    (linear, default), _ = _linear_and(famo)
    assert not torch.allclose(default, linear, rtol=1e-3)  # uniform logits weight by 1 / L_i
    famo = mtl.build("famo", 3)
    famo.neutral_start()
    (linear, neutral), logs = _linear_and(famo)
    assert torch.allclose(logs["weights"], torch.full((3,), 1 / 3, dtype=torch.float64), rtol=1e-12)
    assert torch.allclose(neutral, linear, rtol=1e-10)
    assert torch.isfinite(famo.logits).all() and abs(float(famo.logits.sum())) < 1e-12  # centred
    before = famo.logits.clone()
    famo.after_step(famo.pending_losses.float() * torch.tensor([0.5, 0.9, 1.0]))
    assert not torch.equal(famo.logits, before)  # FAMO's own updates go on from the neutral start


def test_stateless_balancers_have_no_state_to_reset():
    nash = mtl.build("nash", 3)
    before = {k: v.clone() for k, v in nash.state_dict().items()}
    nash.neutral_start()
    assert all(torch.equal(before[k], v) for k, v in nash.state_dict().items())


# ------------------------------------------------------------------------------ warning and default


def test_plain_weights_into_a_routed_recipe_warn_and_matching_ones_do_not():
    with pytest.warns(UserWarning, match="trained without routing.*warm start.*--routing-warmup"):
        routed = zoo.create("dit_t_dtr_nash_k5", pretrained="dit_t.digits")
    assert routed.warm_start_needed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not zoo.create("dit_t_dtr.digits", pretrained=True).warm_start_needed  # same routing
        assert not zoo.create("dit_t_uw_k5", pretrained="dit_t.digits").warm_start_needed  # no routing
        assert not zoo.create("dit_t_dtr_nash_k5").warm_start_needed  # no weights


def test_routed_weights_into_other_routing_warn(tmp_path):
    source = zoo.create("dit_t_dtr", input_size=8, in_channels=1, num_classes=10, beta=0.5, **TINY)
    source.save_pretrained(tmp_path / "dtr05")
    with pytest.warns(UserWarning, match="trained with routing"):
        zoo.create("dit_t_dtr_uw_k5", pretrained=str(tmp_path / "dtr05"))


def test_pretrained_into_routed_recipe_defaults_to_the_warm_start_on_the_command_line(tmp_path, plain_dir):
    folder, _ = plain_dir
    parser = add_train_arguments(argparse.ArgumentParser())
    argv = ["dit_t_dtr_uw_k5", "--steps", "10", "--batch", "10", "--out", str(tmp_path / "cli")]
    argv += [f"--set={k}={v}" for k, v in TINY.items()]
    config = config_from_args(parser.parse_args([*argv, "--pretrained", str(folder)]))
    assert config.routing_warmup is None  # automatic
    trainer = Trainer(config)
    assert trainer.routing_warmup == 5 and trainer.model.net.router.strength == 0.0
    assert torch.allclose(trainer.model.balancer.log_vars.detach(), torch.full((5,), -math.log(2.0)))
    explicit = Trainer(
        config_from_args(parser.parse_args([*argv, "--pretrained", str(folder), "--routing-warmup", "0"]))
    )
    assert explicit.routing_warmup == 0 and explicit.model.net.router.strength == 1.0
    scratch = Trainer(config_from_args(parser.parse_args(argv)))  # no pretrained weights: the recipe as is
    assert scratch.routing_warmup == 0 and scratch.model.net.router.strength == 1.0
    assert torch.equal(scratch.model.balancer.log_vars.detach(), torch.zeros(5))
    with pytest.raises(ValueError, match="no routing to warm up"):
        Trainer(tiny_config(tmp_path, model="dit_t_uw_k5", routing_warmup=2, out=str(tmp_path / "x")))
    with pytest.raises(ValueError, match="routing_warmup"):
        tiny_config(tmp_path, routing_warmup=-1)


# ------------------------------------------------------------------------------ training and resume


def test_fit_reaches_the_recipe_at_step_n_and_resume_continues_the_warm_up(tmp_path, plain_dir):
    folder, _ = plain_dir
    whole = Trainer(
        tiny_config(tmp_path, steps=6, routing_warmup=4, pretrained=str(folder), out=str(tmp_path / "w"))
    )
    whole.fit()
    state, _ = load_latest_checkpoint(tmp_path / "w")
    assert state["routing_warmup"] == 4
    assert any(not torch.equal(state["ema"][key], value) for key, value in state["net"].items())  # averaging
    assert whole.model.net.router.strength == 1.0 and whole.ema_model.net.router.strength == 1.0
    assert "strength" not in whole.model.config["routing"]
    final = zoo.create(f"local-dir:{tmp_path / 'w' / 'final'}")
    assert final.net.router.strength == 1.0
    # the step-2 checkpoint is mid warm-up: its config records the strength, so its EMA model rebuilds
    split_config = tiny_config(
        tmp_path, steps=2, routing_warmup=4, pretrained=str(folder), out=str(tmp_path / "s")
    )
    first = Trainer(split_config)
    first.fit()
    state, _ = load_latest_checkpoint(tmp_path / "s")
    assert json.loads(state["model_config"])["routing"]["strength"] == 0.5
    # during the warm-up the EMA is the live weights (an average over other mask strengths fits no mask)
    assert all(torch.equal(state["ema"][key], value) for key, value in state["net"].items())
    assert zoo.create(f"local-dir:{tmp_path / 's' / 'final'}").net.router.strength == 0.5
    # resumed without the flag: the checkpoint's schedule goes on, and the run equals the uninterrupted one
    resumed = Trainer(
        tiny_config(tmp_path, steps=6, pretrained=str(folder), out=str(tmp_path / "s"), resume=True)
    )
    resumed.fit()
    assert resumed.routing_warmup == 4 and resumed.model.net.router.strength == 1.0
    for key, value in whole.model.net.state_dict().items():
        assert torch.equal(resumed.model.net.state_dict()[key], value), key
    for key, value in whole.model.balancer.state_dict().items():
        assert torch.equal(resumed.model.balancer.state_dict()[key], value), key
