"""The flow process (SiT's linear interpolant, zoo/diffusion/flow.py), its solvers and the sit_* models."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

import zoo
from tests.trainkit import tiny_config
from zoo import clustering, mtl
from zoo.config import config_from_name
from zoo.diffusion import FlowMatching, build_process, solvers_for
from zoo.hub import convert
from zoo.hub.create import _state_dict_from_source
from zoo.hub.pretrained import PretrainedCfg
from zoo.hub.registry import get_pretrained_cfg
from zoo.train import Trainer
from zoo.validate import validate_config

T = 1000


def toy_field(x: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
    """An analytic velocity field u(x, t) = -(1 + t) x + sin(3 t) (per sample t)."""
    tt = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return -(1.0 + tt) * x + torch.sin(3.0 * tt)


# ------------------------------------------------------------------------------------------ tasks and SNR


def test_tasks_map_time_bins_with_task_zero_nearest_the_data():
    process = FlowMatching()
    t = torch.tensor([1.0, 0.9995, 0.999, 0.5, 0.0005, 0.0], dtype=torch.float64)
    assert process.task_of(t).tolist() == [0, 0, 0, 499, 999, 999]
    # each task's time is the centre of its bin and maps back to that task
    tasks = torch.arange(T)
    assert torch.equal(process.task_of(process.task_times), tasks)
    assert process.task_times[0].item() == pytest.approx(0.9995, abs=1e-15)
    expected = torch.tensor(
        [((T - i - 0.5) / T / (1 - (T - i - 0.5) / T)) ** 2 for i in range(T)], dtype=torch.float64
    )
    torch.testing.assert_close(process.snr, expected, rtol=1e-12, atol=0)
    assert process.snr.dtype == torch.float64 and bool((process.snr[1:] < process.snr[:-1]).all())
    assert process.prediction == "velocity" and process.num_timesteps == T


def test_flow_loss_equals_a_float64_hand_computation():
    process = FlowMatching()
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(6, 2, 4, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(6, 2, 4, 4, generator=gen, dtype=torch.float64)
    tasks = torch.tensor([0, 1, 250, 500, 998, 999])
    seen = {}

    def net(x, t, y):
        seen["t"] = t
        return toy_field(x, t)

    out = process.training_losses(net, x0, tasks, noise=eps, generator=torch.Generator().manual_seed(11))
    offsets = torch.rand(6, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    expected = []
    for i in range(6):
        time = (T - 1 - int(tasks[i]) + float(offsets[i])) / T  # uniform inside the task's bin
        assert time == pytest.approx(float(out["time"][i]), abs=1e-15)
        assert int(process.task_of(torch.tensor([time]))) == int(tasks[i])
        x_t = time * x0[i] + (1 - time) * eps[i]
        u = -(1 + time) * x_t + math.sin(3 * time)
        expected.append(((u - (x0[i] - eps[i])) ** 2).mean())
    torch.testing.assert_close(out["loss"], torch.stack(expected), rtol=1e-12, atol=0)
    assert torch.equal(out["mse"], out["loss"])
    torch.testing.assert_close(seen["t"], out["time"], rtol=0, atol=0)  # the net is fed the time itself

    # continuous times are used as given (SiT's own draw), and are checked
    times = torch.tensor([0.0, 0.25, 0.5, 0.75, 0.9, 1.0], dtype=torch.float64)
    out = process.training_losses(lambda x, t, y: toy_field(x, t), x0, times, noise=eps)
    x_t = times.reshape(-1, 1, 1, 1) * x0 + (1 - times.reshape(-1, 1, 1, 1)) * eps
    hand = ((toy_field(x_t, times) - (x0 - eps)) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out["loss"], hand, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        process.training_losses(net, x0, times + 0.5, noise=eps)
    with pytest.raises(ValueError, match="tasks must lie"):
        process.training_losses(net, x0, tasks + 1, noise=eps)


def test_uniform_tasks_give_sits_uniform_time():
    process = FlowMatching()
    tasks = torch.randint(0, T, (20000,), generator=torch.Generator().manual_seed(0))
    times, _ = process._training_times(tasks, tasks.numel(), torch.Generator().manual_seed(1))
    assert 0.0 <= float(times.min()) and float(times.max()) < 1.0
    counts = torch.histc(times.float(), bins=10, min=0.0, max=1.0)
    assert float((counts / times.numel() - 0.1).abs().max()) < 0.01


# ------------------------------------------------------------------------------------------ solvers


def test_euler_and_heun_equal_hand_written_float64_loops():
    process = FlowMatching()
    x_start = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    steps = 7
    x_e, x_h = x_start.clone(), x_start.clone()
    for i in range(steps):
        t0, t1 = i / steps, (i + 1) / steps
        x_e = x_e + (t1 - t0) * (-(1 + t0) * x_e + math.sin(3 * t0))
        k1 = -(1 + t0) * x_h + math.sin(3 * t0)
        x_pred = x_h + (t1 - t0) * k1
        k2 = -(1 + t1) * x_pred + math.sin(3 * t1)
        x_h = x_h + 0.5 * (t1 - t0) * (k1 + k2)
    for solver, hand in (("euler", x_e), ("heun", x_h)):
        out = process.sample(toy_field, x_start.shape, sampler=solver, steps=steps, noise=x_start)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, hand, rtol=1e-13, atol=1e-13)
    # orders: halving the step divides Euler's error by about 2 and Heun's by about 4
    fine = process.sample(toy_field, x_start.shape, sampler="heun", steps=2000, noise=x_start)
    for solver, factor in (("euler", 2.0), ("heun", 4.0)):
        coarse, finer = (
            (process.sample(toy_field, x_start.shape, sampler=solver, steps=n, noise=x_start) - fine)
            .abs()
            .max()
            for n in (20, 40)
        )
        assert float(coarse / finer) == pytest.approx(factor, rel=0.15)


def test_euler_equals_diffusers_flow_match_euler_where_grids_coincide():
    from diffusers import FlowMatchEulerDiscreteScheduler

    process = FlowMatching()
    steps = 10
    x_start = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    ours = process.sample(toy_field, x_start.shape, sampler="euler", steps=steps, noise=x_start)
    # diffusers: sigma = 1 - t, x_sigma = (1 - sigma) x0 + sigma eps, and the model predicts eps - x0 = -u
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=1.0)
    scheduler.set_timesteps(sigmas=(1.0 - process.time_grid(steps)[:-1]).tolist())
    torch.testing.assert_close(scheduler.sigmas.double(), 1.0 - process.time_grid(steps), rtol=0, atol=1e-7)
    x = x_start.clone()
    for i, timestep in enumerate(scheduler.timesteps):
        t = torch.full((x.shape[0],), 1.0 - float(scheduler.sigmas[i]))
        x = scheduler.step(-toy_field(x, t), timestep, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


def _oracle(x0: torch.Tensor, eps0: torch.Tensor):
    """The velocity of the straight path through x0: x0 - eps implied by (x, t); at t = 1 its limit x0 - eps0."""

    def net(x, t, y=None):
        tt = t.to(x.dtype).reshape(-1, 1, 1, 1)
        implied = torch.where(tt < 1, (x - tt * x0) / (1 - tt).clamp(min=1e-300), eps0)
        return x0 - implied

    return net


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_oracle_recovers_x0_with_the_ode_solvers(solver):
    gen = torch.Generator().manual_seed(2)
    x0 = torch.rand(4, 1, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    eps0 = torch.randn(4, 1, 4, 4, generator=gen, dtype=torch.float64)
    for steps in (1, 5, 50):
        out = FlowMatching().sample(_oracle(x0, eps0), x0.shape, sampler=solver, steps=steps, noise=eps0)
        torch.testing.assert_close(out, x0, rtol=0, atol=1e-12)


def test_oracle_recovers_x0_with_the_sde_solver_up_to_its_last_step():
    # For the point mass at x0 the exact field is (x0 - x) / (1 - t); SiT's mean last step at t = 0.96
    # reaches x0 through the velocity and moves a further -0.04 eps through w s = -eps: the error is 0.04 eps
    gen = torch.Generator().manual_seed(2)
    x0 = torch.rand(64, 1, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    eps0 = torch.randn(64, 1, 4, 4, generator=gen, dtype=torch.float64)
    oracle = _oracle(x0, eps0)
    out = FlowMatching().sample(
        oracle, x0.shape, sampler="sde", steps=250, noise=eps0, generator=torch.Generator().manual_seed(1)
    )
    rms = float((out - x0).pow(2).mean().sqrt())
    assert 0.03 < rms < 0.055, rms
    # the last step alone, by hand: from x at t = 0.96 it lands on x0 - 0.04 eps_implied
    x = 0.96 * x0 + 0.04 * eps0
    steps2 = FlowMatching().sample(
        oracle, x0.shape, sampler="sde", steps=2, noise=x, generator=torch.Generator().manual_seed(1)
    )
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x_mid = x + (x0 - x) * 0.96 + (0.0 - x) * 0.96 + math.sqrt(2 * 0.96) * z  # t = 0: u = x0 - x, w s = -x
    t = 0.96
    implied = (x_mid - t * x0) / (1 - t)
    torch.testing.assert_close(steps2, x0 - 0.04 * implied, rtol=0, atol=1e-9)


def test_sampling_numbers_are_checked_before_any_work():
    process = FlowMatching()
    with pytest.raises(ValueError, match="steps >= 2"):
        process.sample(toy_field, (1, 1, 2, 2), sampler="sde", steps=1)
    with pytest.raises(ValueError, match="integer number of steps"):
        process.sample(toy_field, (1, 1, 2, 2), sampler="euler", steps="ddim50")
    with pytest.raises(ValueError, match="eta"):
        process.sample(toy_field, (1, 1, 2, 2), sampler="euler", steps=2, eta=0.5)
    with pytest.raises(ValueError, match="euler.*heun.*sde"):
        process.sample(toy_field, (1, 1, 2, 2), sampler="ddpm", steps=2)


def test_guidance_mixes_the_velocities_of_the_doubled_batch():
    process = FlowMatching()

    class Net(torch.nn.Module):
        num_classes = 3

        def forward(self, x, t, y):
            return toy_field(x, t) + y.to(x.dtype).reshape(-1, 1, 1, 1)  # the label shifts the field

    x_start = torch.randn(2, 2, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 2])
    out = process.sample(Net(), x_start.shape, y=y, sampler="euler", steps=3, guidance=4.0, noise=x_start)
    x = x_start.clone()
    for i in range(3):
        t = torch.full((2,), i / 3, dtype=torch.float64)
        cond, uncond = toy_field(x, t) + y.reshape(-1, 1, 1, 1), toy_field(x, t) + 3.0
        x = x + (1 / 3) * (uncond + 4.0 * (cond - uncond))
    torch.testing.assert_close(out, x, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------ weightings


def test_weightings_state_their_velocity_form():
    process = FlowMatching()
    tasks = torch.tensor([0, 100, 500, 900, 999])
    snr = process.snr
    time = process.task_times[tasks]
    minsnr = mtl.build_weighting("minsnr", gamma=5.0)
    ones = torch.ones(5, dtype=torch.float64)
    hand = torch.minimum(snr[tasks], torch.tensor(5.0, dtype=torch.float64)) / (1 + snr[tasks].sqrt()) ** 2
    torch.testing.assert_close(minsnr(ones, tasks, snr, "velocity"), hand, rtol=1e-12, atol=0)
    # the same objective: a velocity error e implies the eps error -t e at the task's time
    velocity_mse = torch.rand(5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eps_mse = velocity_mse * time**2
    for weighting in (minsnr, mtl.build_weighting("p2", k=1.0, gamma=1.0)):
        torch.testing.assert_close(
            weighting(velocity_mse, tasks, snr, "velocity"),
            weighting(eps_mse, tasks, snr, "eps"),
            rtol=1e-12,
            atol=0,
        )
    # eps numbers are unchanged
    torch.testing.assert_close(
        minsnr(ones, tasks, snr, "eps"), torch.where(snr[tasks] <= 5, 1.0, 5.0 / snr[tasks]), rtol=0, atol=0
    )


# ------------------------------------------------------------------------------------------ sit_* models

SMALL = dict(input_size=8, in_channels=1, num_classes=10)


def test_sit_names_build_dit_networks_with_the_flow_process():
    config = config_from_name("sit_t_dtr_nash_k5", **SMALL)
    assert config["diffusion"] == {
        "process": "flow",
        "schedule": "linear",
        "num_timesteps": T,
        "learn_sigma": False,
    }
    assert config["backbone"]["arch"] == "dit" and config["backbone"]["kwargs"]["learn_sigma"] is False
    assert (
        "process" not in config_from_name("dit_t_dtr_nash_k5", **SMALL)["diffusion"]
    )  # ddpm stays as it was
    for name in ("sit_s", "sit_b_p4", "sit_l_p8", "sit_xl"):
        assert config_from_name(name)["diffusion"]["process"] == "flow"
    assert config_from_name("sit_xl_uw_k8_logsnr")["clustering"] == {"k": 8, "objective": "logsnr"}
    with pytest.raises(ValueError, match="linear path"):
        build_process(config_from_name("sit_t", schedule="cosine")["diffusion"])
    with pytest.raises(ValueError, match="normal_cdf"):
        config_from_name("sit_t", normal_cdf="exact")
    validate_config({k: v for k, v in config.items() if k != "_affinity"}, "test")
    assert zoo.create("sit_t", **SMALL).solvers == solvers_for("flow") == ["euler", "heun", "sde"]


def test_sit_t_dtr_nash_k5_trains_a_step_and_samples_with_every_flow_solver():
    torch.manual_seed(0)
    model = zoo.create("sit_t_dtr_nash_k5", **SMALL)
    assert isinstance(model.diffusion, FlowMatching)
    x0 = torch.rand(10, 1, 8, 8) * 2 - 1
    y = torch.randint(0, 10, (10,))
    out = model.loss(x0, y)
    assert out.cluster_losses.shape == (5,) and torch.isfinite(out.total)
    logs = model.backward(out)
    assert logs["updated"]
    grads = [p.grad for p in model.net.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    for solver in model.solvers:
        images = model.sample(y[:3], solver=solver, steps=3)
        assert images.shape == (3, 1, 8, 8) and bool(torch.isfinite(images).all())
    guided = model.sample(y[:3], solver="heun", steps=2, guidance=2.0)
    assert bool(torch.isfinite(guided).all())
    # the router gets the task of the continuous time, through task= (with weights that let masks act)
    with torch.no_grad():
        for p in model.net.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    model.net.eval()
    t = torch.tensor([0.0, 0.5, 0.9999])
    x = torch.randn(3, 1, 8, 8)
    with pytest.raises(TypeError, match="task="):
        model.net(x, t, y[:3])
    routed = model.net(x, t, y[:3], task=model.diffusion.task_of(t))
    # the same times routed as other tasks give other outputs: the masks follow task=, not t
    assert not torch.allclose(routed, model.net(x, t, y[:3], task=torch.tensor([999, 999, 999])))


def test_ddim_on_a_flow_model_is_an_error_naming_the_flow_solvers():
    model = zoo.create("sit_t", **SMALL)
    with pytest.raises(ValueError, match=r"'ddim' for the 'flow' process.*\['euler', 'heun', 'sde'\]"):
        model.sample([1, 2], solver="ddim", steps=5)


@pytest.mark.parametrize("objective", ["snr", "logsnr"])
def test_clusters_are_computed_over_the_flow_snr(objective):
    model = zoo.create(f"sit_t_nash_k5_{objective}", **SMALL)
    direct = clustering.interval_clustering(5, objective, snr=FlowMatching().snr, num_timesteps=T)
    assert model.clusters.intervals == direct.intervals
    ddpm = zoo.create(f"dit_t_nash_k5_{objective}", **SMALL)
    assert model.clusters.intervals != ddpm.clusters.intervals  # another SNR curve, other intervals


def test_save_pretrained_and_local_dir_round_trip_keep_the_process(tmp_path):
    model = zoo.create("sit_t_dtr_uw_k5", **SMALL)
    with torch.no_grad():
        for p in model.net.final_layer.parameters():
            p.normal_(0, 0.02)  # a non-zero output head, so samples depend on the weights
    model.save_pretrained(tmp_path / "m")
    again = zoo.create(f"local-dir:{tmp_path / 'm'}")
    assert again.config["diffusion"]["process"] == "flow" and isinstance(again.diffusion, FlowMatching)
    assert again.solvers == ["euler", "heun", "sde"]
    y = torch.tensor([1, 2, 3])
    torch.testing.assert_close(
        again.sample(y, solver="euler", steps=4), model.sample(y, solver="euler", steps=4)
    )


# ------------------------------------------------------------------------------------------ SiT weights


def _sit_layout_state(depth: int, hidden: int, patch: int, channels: int, classes: int, grid: int) -> dict:
    """A random state dict under the key names and shapes of SiT's models.py (learn_sigma=True)."""
    gen = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen) * 0.02

    out = 2 * channels
    state = {
        "pos_embed": torch.zeros(1, grid * grid, hidden),
        "x_embedder.proj.weight": rnd(hidden, channels, patch, patch),
        "x_embedder.proj.bias": rnd(hidden),
        "t_embedder.mlp.0.weight": rnd(hidden, 256),
        "t_embedder.mlp.0.bias": rnd(hidden),
        "t_embedder.mlp.2.weight": rnd(hidden, hidden),
        "t_embedder.mlp.2.bias": rnd(hidden),
        "y_embedder.embedding_table.weight": rnd(classes + 1, hidden),
        "final_layer.linear.weight": rnd(patch * patch * out, hidden),
        "final_layer.linear.bias": rnd(patch * patch * out),
        "final_layer.adaLN_modulation.1.weight": rnd(2 * hidden, hidden),
        "final_layer.adaLN_modulation.1.bias": rnd(2 * hidden),
    }
    for i in range(depth):
        for name, shape in {
            "attn.qkv": (3 * hidden, hidden),
            "attn.proj": (hidden, hidden),
            "mlp.fc1": (4 * hidden, hidden),
            "mlp.fc2": (hidden, 4 * hidden),
            "adaLN_modulation.1": (6 * hidden, hidden),
        }.items():
            state[f"blocks.{i}.{name}.weight"] = rnd(*shape)
            state[f"blocks.{i}.{name}.bias"] = rnd(shape[0])
    return state


@pytest.mark.parametrize("layout", ["released", "train.py"])
def test_sit_checkpoint_layout_converts_and_loads(tmp_path, layout):
    state = _sit_layout_state(depth=4, hidden=128, patch=2, channels=1, classes=10, grid=4)
    path = tmp_path / "SiT.pt"
    if layout == "released":
        torch.save(state, path)
    else:
        model_state = {k: torch.zeros_like(v) for k, v in state.items()}
        torch.save(
            {"model": model_state, "ema": state, "opt": {}, "args": argparse.Namespace(model="SiT-T")}, path
        )
    cfg = PretrainedCfg(arch="sit_t", tag="test", format="sit", file=str(path))
    loaded, config = _state_dict_from_source(cfg)
    assert config is None and set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)  # the EMA entry, as SiT's find_model
    model = zoo.create("sit_t", learn_sigma=True, **SMALL)
    model.load_net_state(loaded, source=str(path))
    model.net.eval()  # no label dropout
    # the velocity is the first half of the 2C outputs, as SiT's forward keeps x.chunk(2)[0]
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.7]), torch.tensor([1, 2])
    full = model.net(x, t, y)
    assert full.shape[1] == 2
    torch.testing.assert_close(model.diffusion.velocity(model.net, x, t, y), full[:, :1])
    bad = tmp_path / "bad.pt"
    torch.save({**state, "head.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a SiT checkpoint"):
        convert.load_sit_checkpoint(bad)


def test_sit_xl_in1k_256_is_registered_with_its_release_facts():
    cfg = get_pretrained_cfg("sit_xl.in1k_256")
    assert cfg.format == "sit" and cfg.license == "mit" and cfg.url.startswith("https://")
    assert cfg.vae["repo"] == "stabilityai/sd-vae-ft-mse" and cfg.results["fid"] == 2.06
    config = config_from_name("sit_xl", **{k: v for k, v in cfg.overrides.items()})
    assert config["diffusion"] == {
        "process": "flow",
        "schedule": "linear",
        "num_timesteps": T,
        "learn_sigma": True,
    }
    assert (
        config["backbone"]["kwargs"]["learn_sigma"] is True
        and config["backbone"]["kwargs"]["input_size"] == 32
    )
    validate_config({k: v for k, v in config.items() if k != "_affinity"}, "sit_xl.in1k_256")


def test_zoo_train_runs_a_flow_recipe_and_its_sample_grid(tmp_path):
    """`zoo train sit_*`: the sample grid uses the flow process's solver; a DDPM solver is refused at start."""

    trainer = Trainer(tiny_config(tmp_path, model="sit_t_dtr_nash_k5", steps=2, ckpt_every=0))
    trainer.fit()
    grid = tmp_path / "run" / "final"
    assert (grid / "model.safetensors").is_file()
    assert any(p.suffix == ".png" for p in (tmp_path / "run").rglob("*.png"))
    with pytest.raises(ValueError, match=r"not a solver of the model's 'flow' process.*euler"):
        Trainer(tiny_config(tmp_path / "b", model="sit_t", sample_sampler="ddim"))
    with pytest.raises(ValueError, match="sample-steps 1: sde"):
        Trainer(tiny_config(tmp_path / "c", model="sit_t", sample_sampler="sde", sample_steps=1))
