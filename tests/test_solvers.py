"""The fast solver of the Gaussian diffusion (dpm++2m) against diffusers and the maths, the NFE every sample
reports, the step-count checks, and the --solver flags of `zoo sample` and `zoo leaderboard`."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

import zoo
from zoo.diffusion import GaussianDiffusion, dpm_solver_grid, get_solver, solvers_for
from zoo.eval import leaderboard, sampling
from zoo.hub.shipped import shipped_entries

pytestmark = pytest.mark.usefixtures("one_thread")

SHIPPED = shipped_entries()
DIGITS = {"input_size": 8, "in_channels": 1, "num_classes": 10, "hidden_size": 32, "depth": 2, "num_heads": 2}


class SmoothNet(torch.nn.Module):
    """A deterministic eps-predictor whose data prediction is tanh(conv(sqrt(abar) x)): a smooth,
    x-dependent x0 in [-1, 1], so the second-order terms of the solver matter."""

    def __init__(self, alphas_cumprod: torch.Tensor, channels: int = 3, learn_sigma: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(channels, channels, 1)
        self.register_buffer("abar", alphas_cumprod.float())
        self.learn_sigma = learn_sigma
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t, y=None):
        self.calls.append((x.clone(), t.clone()))
        abar = self.abar.to(x.dtype)[t].view(-1, 1, 1, 1)
        weight, bias = self.conv.weight.to(x.dtype), self.conv.bias.to(x.dtype)
        x0 = torch.tanh(torch.nn.functional.conv2d(x * abar.sqrt(), weight, bias))
        eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
        if self.learn_sigma:  # a variance half the ODE solver must ignore
            return torch.cat([eps, torch.full_like(eps, 7.0)], dim=1)
        return eps


class OracleNet(torch.nn.Module):
    """Knows x0: eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t) at the timestep it is given."""

    def __init__(self, x0: torch.Tensor, alphas_cumprod: torch.Tensor, learn_sigma: bool = False) -> None:
        super().__init__()
        self.x0, self.abar, self.learn_sigma = x0, alphas_cumprod, learn_sigma
        self.inputs: list[torch.Tensor] = []

    def forward(self, x, t, y=None):
        self.inputs.append(x.clone())
        abar = self.abar.to(x.dtype)[t].view(-1, 1, 1, 1)
        eps = (x - abar.sqrt() * self.x0.to(x.dtype)) / (1 - abar).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], dim=1) if self.learn_sigma else eps


def diffusers_dpmpp_2m(process, net, noise, steps, grid, learn_sigma=False):
    """The same sampling with diffusers' DPMSolverMultistepScheduler (dpmsolver++, order 2, defaults)."""
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=process.num_timesteps,
        trained_betas=process.betas.numpy(),
        algorithm_type="dpmsolver++",
        solver_order=2,
        use_karras_sigmas=grid == "karras",
        variance_type="learned_range" if learn_sigma else None,
    )
    # The same betas: diffusers' float32 cumprod of them is up to 8e-5 (relative) off the float64 table at
    # sigma_min, which would dominate the comparison; its grid is then built from the exact alpha_bar.
    scheduler.alphas_cumprod = process.alphas_cumprod.numpy().copy()
    scheduler.set_timesteps(steps)
    x = noise.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(net(x, t.expand(x.shape[0])), t, x).prev_sample
    return x, scheduler


@pytest.mark.parametrize("grid", ["uniform", "karras"])
@pytest.mark.parametrize("steps, learn_sigma", [(5, False), (10, True), (20, False), (50, False)])
def test_dpmpp_2m_equals_diffusers_dpm_solver_multistep(grid, steps, learn_sigma):
    process = GaussianDiffusion("linear", 1000, learn_sigma=learn_sigma)
    net = SmoothNet(process.alphas_cumprod, learn_sigma=learn_sigma)
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(steps))
    theirs, scheduler = diffusers_dpmpp_2m(process, net, noise, steps, grid, learn_sigma)
    their_timesteps = [int(t[0]) for _, t in net.calls]
    net.calls.clear()
    ours = process.sample(net, noise.shape, sampler="dpm++2m", steps=steps, grid=grid, noise=noise)
    assert [int(t[0]) for _, t in net.calls] == their_timesteps  # the same grid, one call per step
    indices, sigmas = dpm_solver_grid(process, steps, grid)
    np.testing.assert_allclose(sigmas, scheduler.sigmas.double().numpy(), rtol=1e-6)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert ours.abs().max() > 0.1  # not a trivially zero sample


def test_the_second_order_term_is_what_diffusers_has():
    """Dropping the history (a first-order solver on the same grid) is far from diffusers: the test above
    can tell the orders apart."""
    process = GaussianDiffusion("linear", 1000, learn_sigma=False)
    net = SmoothNet(process.alphas_cumprod)
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    theirs, _ = diffusers_dpmpp_2m(process, net, noise, 10, "uniform")
    indices, sigmas = dpm_solver_grid(process, 10, "uniform")
    x = noise.double()
    alphas = 1 / np.sqrt(sigmas**2 + 1)
    for i, index in enumerate(indices):  # x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) D0 everywhere
        eps = net(x, torch.full((2,), int(index)))
        denoised = (x - sigmas[i] * alphas[i] * eps) / alphas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:  # e^{-h} = sigma_t / sigma_s in the variance-exploding sigmas
            ratio = (sigmas[i + 1] * alphas[i + 1]) / (sigmas[i] * alphas[i])
            x = ratio * x + alphas[i + 1] * (1 - sigmas[i + 1] / sigmas[i]) * denoised
    first_order = x.float()
    ours = process.sample(net, noise.shape, sampler="dpm++2m", steps=10, noise=noise)
    assert (first_order - theirs).abs().max() > 100 * (ours - theirs).abs().max()
    assert (first_order - theirs).abs().max() > 1e-3


def test_grids_are_diffusers_linspace_and_karras():
    process = GaussianDiffusion("linear", 1000)
    indices, sigmas = dpm_solver_grid(process, 5, "uniform")
    assert indices.tolist() == [999, 799, 599, 400, 200] and sigmas[-1] == 0.0
    abar = process.alphas_cumprod.numpy()
    np.testing.assert_allclose(sigmas[:-1], np.sqrt((1 - abar[indices]) / abar[indices]), rtol=1e-12)
    indices, sigmas = dpm_solver_grid(process, 4, "karras")
    sigma_min, sigma_max = np.sqrt((1 - abar[0]) / abar[0]), np.sqrt((1 - abar[-1]) / abar[-1])
    ramp = np.arange(4) / 3
    expected = (sigma_max ** (1 / 7) + ramp * (sigma_min ** (1 / 7) - sigma_max ** (1 / 7))) ** 7
    np.testing.assert_allclose(sigmas[:-1], expected, rtol=1e-12)
    assert indices[0] == 999 and indices[-1] == 0 and list(indices) == sorted(indices, reverse=True)


@pytest.mark.parametrize("grid", ["uniform", "karras"])
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_oracle_net_recovers_x0(grid, learn_sigma):
    process = GaussianDiffusion("linear", 1000, learn_sigma=learn_sigma)
    generator = torch.Generator().manual_seed(3)
    x0 = torch.rand(2, 3, 4, 4, generator=generator) * 2 - 1
    for dtype, atol in ((torch.float32, 2e-5), (torch.float64, 1e-10)):
        oracle = OracleNet(x0, process.alphas_cumprod, learn_sigma)
        noise = torch.randn(x0.shape, generator=generator, dtype=dtype)
        sample = process.sample(oracle, x0.shape, sampler="dpm++2m", steps=10, grid=grid, noise=noise)
        torch.testing.assert_close(sample, x0.to(dtype), atol=atol, rtol=0)
        if grid == "uniform":  # a point mass at x0: every state lies exactly on the ODE's path
            indices, sigmas = dpm_solver_grid(process, 10, grid)
            alphas = torch.as_tensor(1 / np.sqrt(sigmas**2 + 1), dtype=dtype)
            vp_sigmas = torch.as_tensor(sigmas, dtype=dtype) * alphas
            eps = (noise - alphas[0] * x0.to(dtype)) / vp_sigmas[0]
            for i, state in enumerate(oracle.inputs):
                torch.testing.assert_close(
                    state, alphas[i] * x0.to(dtype) + vp_sigmas[i] * eps, atol=atol, rtol=0
                )


def test_dpmpp_2m_is_registered_for_ddpm_and_refuses_bad_input_before_any_forward():
    assert solvers_for("ddpm")[:3] == ["ddpm", "ddim", "dpm++2m"]
    assert get_solver("ddpm", "dpm++2m").min_steps == 3
    process = GaussianDiffusion("linear", 100, learn_sigma=False)
    net = SmoothNet(process.alphas_cumprod)
    shape = (2, 3, 4, 4)
    cases = [
        (dict(steps=0), ValueError, r"\[3, 100\]"),
        (dict(steps=2), ValueError, r"\[3, 100\]"),
        (dict(steps=101), ValueError, r"\[3, 100\]"),
        (dict(steps="20"), ValueError, "integer number of steps"),
        (dict(steps=None), ValueError, "integer number of steps"),
        (dict(steps=10, grid="cosine"), ValueError, "grid"),
        (dict(steps=10, eta=0.5), ValueError, "eta is a DDIM parameter"),
        (dict(steps=10, rho=3), TypeError, "takes no option 'rho'"),
        (dict(steps=100), ValueError, "repeat a timestep"),  # 100 of 100 uniform: a zero step
    ]
    for kwargs, error, words in cases:
        with pytest.raises(error, match=words):
            process.sample(net, shape, sampler="dpm++2m", **kwargs)
    with pytest.raises(TypeError, match="solver 'ddim' takes no option 'grid'"):
        process.sample(net, shape, sampler="ddim", steps=10, grid="karras")
    assert not net.calls
    assert process.sample(net, shape, sampler="dpm++2m", steps=100, grid="karras").shape == shape


# ----------------------------------------------------------------------------- NFE


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return zoo.create("dit_t", **DIGITS)


@pytest.mark.parametrize(
    "solver, steps, options", [("ddpm", 250, {}), ("ddim", 50, {}), ("dpm++2m", 20, {"grid": "karras"})]
)
def test_every_sample_reports_its_nfe_and_guidance_doubles_it(model, solver, steps, options):
    calls = []
    hook = model.net.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        images, info = model.sample([1, 2, 3], steps=steps, solver=solver, return_info=True, **options)
        assert info == {
            "solver": solver,
            "steps": steps,
            "options": options,
            "guidance": 1.0,
            "net_calls": steps,
            "nfe": steps,
        }
        assert calls == [3] * steps and images.shape == (3, 1, 8, 8)
        calls.clear()
        _, guided = model.sample(
            [1, 2, 3], steps=steps, solver=solver, guidance=2.0, return_info=True, **options
        )
        assert (guided["net_calls"], guided["nfe"], guided["guidance"]) == (steps, 2 * steps, 2.0)
        assert calls == [6] * steps  # one forward of the doubled batch per step
    finally:
        hook.remove()
    assert not model.net._forward_pre_hooks  # the counting hook is gone after the call
    assert isinstance(model.sample([1], steps=3, solver="dpm++2m"), torch.Tensor)  # without info: images


def test_the_grid_reaches_the_solver_from_model_sample(model):
    seen = {}
    for grid in ("uniform", "karras"):
        timesteps = []
        hook = model.net.register_forward_pre_hook(
            lambda module, args, seen=timesteps: seen.append(int(args[1][0]))
        )
        try:
            model.sample([0], steps=6, solver="dpm++2m", grid=grid)
        finally:
            hook.remove()
        seen[grid] = timesteps
        assert timesteps == dpm_solver_grid(model.diffusion, 6, grid)[0].tolist()
    assert seen["uniform"] != seen["karras"]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"solver": "ddpm", "steps": 0}, r"\[1, 1000\]"),
        ({"solver": "ddim", "steps": 1001}, r"\[1, 1000\]"),
        ({"solver": "dpm++2m", "steps": 2}, r"\[3, 1000\]"),
        ({"solver": "euler", "steps": 10}, "dpm\\+\\+2m"),  # an unknown solver names those that fit
    ],
)
def test_impossible_step_counts_are_refused_before_any_forward(model, kwargs, words):
    calls = []
    hook = model.net.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        with pytest.raises(ValueError, match=words):
            model.sample([1, 2], **kwargs)
    finally:
        hook.remove()
    assert not calls


# ----------------------------------------------------------------------------- command line


def test_zoo_sample_solver_flag_alias_grid_and_checks_before_loading(monkeypatch):
    parser = sampling.add_sample_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["dit_t.digits", "--solver", "dpm++2m", "--grid", "karras", "--steps", "20"])
    assert (args.solver, args.grid, args.steps) == ("dpm++2m", "karras", 20)
    assert parser.parse_args(["dit_t.digits", "--sampler", "ddim"]).solver == "ddim"  # the old flag
    monkeypatch.setattr(sampling, "load_model", lambda name: pytest.fail("the model was loaded"))
    for argv, words in (
        (["--solver", "ddim", "--grid", "karras"], "takes no time grid"),
        (["--solver", "dpm++2m", "--steps", "2"], "needs steps >= 3"),
        (["--solver", "dpm++2m", "--eta", "0.3"], "--eta is a DDIM parameter"),
    ):
        with pytest.raises(ValueError, match=words):
            sampling.main_from_args(parser.parse_args(["dit_t.digits", *argv]))


def test_zoo_sample_prints_the_nfe(model, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sampling, "load_model", lambda name: model)
    parser = sampling.add_sample_arguments(argparse.ArgumentParser())
    argv = ["x", "--solver", "dpm++2m", "--steps", "4", "--cfg", "1.5", "--n", "5", "--batch", "2"]
    args = parser.parse_args([*argv, "--out", str(tmp_path / "g.png"), "--device", "cpu", "--no-progress"])
    assert sampling.main_from_args(args) == 0
    assert "dpm++2m (4 steps, NFE 8 per image, 12 net calls)" in capsys.readouterr().out  # 3 batches x 4


def test_zoo_leaderboard_solver_steps_flags_and_settings():
    parser = leaderboard.add_leaderboard_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--solver", "dpm++2m", "--steps", "20", "--grid", "karras"])
    assert (args.solvers, args.steps, args.grid) == (["dpm++2m"], 20, "karras")
    assert parser.parse_args(["--sampler", "ddpm"]).solvers == ["ddpm"]
    settings = leaderboard.LeaderboardSettings(sampler="dpm++2m", steps=20, grid="karras")
    assert settings.choice("ddpm").options == (("grid", "karras"),)
    assert (settings.choice("ddpm").solver, settings.choice("ddpm").steps) == ("dpm++2m", 20)
    with pytest.raises(ValueError, match="needs steps >= 3"):
        leaderboard.LeaderboardSettings(sampler="dpm++2m", steps=2)
    with pytest.raises(ValueError, match="no solver of the protocol .* takes a time grid"):
        leaderboard.LeaderboardSettings(sampler="ddpm", grid="karras")


@pytest.mark.skipif(not SHIPPED, reason="no shipped models (run scripts/train_shipped.py)")
def test_leaderboard_protocol_records_solver_and_measured_nfe(tmp_path):
    name = sorted(n for n in SHIPPED if n.endswith(".digits"))[0]
    settings = leaderboard.LeaderboardSettings(
        samples=12, steps=3, sampler="dpm++2m", grid="karras", cfg=2.0, batch=5, kid_subsets=3
    )
    payload = leaderboard.run_leaderboard(settings, out=tmp_path, names=[name], tag="solvers")
    (row,) = payload["results"]
    protocol = row["protocol"]
    # 3 batches (5, 5, 2) x 3 steps, each step one guided forward of the doubled batch: 2 NFE per step
    assert (protocol["sampler"], protocol["solver"], protocol["steps"]) == ("dpm++2m", "dpm++2m", 3)
    assert (protocol["nfe"], protocol["net_calls"], protocol["solver_options"]) == (6, 9, {"grid": "karras"})
    assert "nfe=6" in (tmp_path / "leaderboard_solvers.md").read_text()
