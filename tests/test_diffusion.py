"""Gaussian diffusion: schedules, posterior, VB term, respacing and samplers checked against the maths.

Reference values are re-derived here in float64 numpy from the definitions (Gaussian conditioning,
KL of Gaussians, the normal CDF), never taken from the code under test.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from zoo.diffusion import GaussianDiffusion, classifier_free_guidance, space_timesteps

# ----------------------------------------------------------------------------- independent references


def linear_alpha_bar(num_timesteps: int = 1000) -> np.ndarray:
    scale = 1000.0 / num_timesteps
    betas = np.array([scale * (1e-4 + (0.02 - 1e-4) * i / (num_timesteps - 1)) for i in range(num_timesteps)])
    return np.cumprod(1.0 - betas)


def cosine_f(s: float) -> float:
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def conditional_gaussian(x0, x_t, alpha_bar_prev, alpha_bar_t):
    """Mean and variance of x_{t-1} | x_t, x0 by conditioning the joint Gaussian of (x_{t-1}, x_t) on x_t."""
    alpha_t = alpha_bar_t / alpha_bar_prev
    mean_prev, var_prev = math.sqrt(alpha_bar_prev) * x0, 1.0 - alpha_bar_prev
    mean_t = math.sqrt(alpha_t) * mean_prev
    covariance = math.sqrt(alpha_t) * var_prev
    var_t = alpha_t * var_prev + (1.0 - alpha_t)
    return mean_prev + covariance / var_t * (x_t - mean_t), var_prev - covariance**2 / var_t


def normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def decoder_log_likelihood(x: float, mean: float, log_variance: float) -> float:
    std = math.exp(0.5 * log_variance)
    upper, lower = (x - mean + 1 / 255) / std, (x - mean - 1 / 255) / std
    if x < -0.999:
        return math.log(normal_cdf(upper))
    if x > 0.999:
        return math.log(1.0 - normal_cdf(lower))
    return math.log(max(normal_cdf(upper) - normal_cdf(lower), 1e-12))


def gaussian_kl(mean1, var1, mean2, var2) -> float:
    return 0.5 * (math.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


class FixedNet:
    """Returns a fixed output regardless of input; records the calls it gets."""

    def __init__(self, output: torch.Tensor) -> None:
        self.output = output
        self.calls: list[torch.Tensor] = []

    def __call__(self, x, t, y):
        self.calls.append(t.clone())
        return self.output


class OracleNet:
    """Returns the exact noise of a known x0: eps = (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t) at ORIGINAL index t."""

    def __init__(self, x0: torch.Tensor, alpha_bar: np.ndarray, learn_sigma: bool) -> None:
        self.x0, self.alpha_bar, self.learn_sigma = x0, torch.from_numpy(alpha_bar), learn_sigma
        self.seen: list[torch.Tensor] = []

    def __call__(self, x, t, y):
        self.seen.append(t.clone())
        alpha_bar = self.alpha_bar[t].to(x.dtype).view(-1, 1, 1, 1)
        eps = (x - alpha_bar.sqrt() * self.x0.to(x.dtype)) / (1 - alpha_bar).sqrt()
        if not self.learn_sigma:
            return eps
        return torch.cat([eps, torch.linspace(-1, 1, eps.numel(), dtype=x.dtype).view_as(eps)], dim=1)


class ConditionalNet(torch.nn.Module):
    """A tiny nonlinear class-conditional net with a null label, counting its forward calls."""

    def __init__(self, channels: int = 4, num_classes: int = 3, learn_sigma: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding = torch.nn.Embedding(num_classes + 1, channels)
        self.mix = torch.nn.Conv2d(channels, 2 * channels if learn_sigma else channels, 1)
        self.batch_sizes: list[int] = []

    def forward(self, x, t, y):
        self.batch_sizes.append(x.shape[0])
        h = torch.tanh(x + self.embedding(y)[:, :, None, None] + t[:, None, None, None] / 1000.0)
        return torch.tanh(self.mix(h))


def perturbed_oracle(num_timesteps: int, learn_sigma: bool):
    """An oracle for a fixed x0 plus a small nonlinear, label-dependent eps error: samples stay O(1)."""
    torch.manual_seed(0)
    oracle = OracleNet(torch.rand(1, 4, 3, 3) * 2 - 1, linear_alpha_bar(num_timesteps), learn_sigma=False)
    conditional = ConditionalNet(learn_sigma=learn_sigma)

    def net(x, t, y):
        out = conditional(x, t, y)
        return torch.cat([oracle(x, t, y) + 0.1 * out[:, :4], out[:, 4:]], dim=1)

    return net


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("num_timesteps", [1000, 250])
def test_linear_schedule_matches_scaled_linspace(num_timesteps):
    diffusion = GaussianDiffusion("linear", num_timesteps)
    assert diffusion.betas.dtype == torch.float64
    np.testing.assert_allclose(diffusion.alphas_cumprod.numpy(), linear_alpha_bar(num_timesteps), rtol=1e-12)
    assert diffusion.betas[0].item() == pytest.approx(1e-4 * 1000 / num_timesteps, rel=1e-12)
    assert diffusion.betas[-1].item() == pytest.approx(0.02 * 1000 / num_timesteps, rel=1e-12)


def test_cosine_schedule_follows_alpha_bar_function():
    num_timesteps = 1000
    diffusion = GaussianDiffusion("cosine", num_timesteps)
    expected = [
        min(1 - cosine_f((i + 1) / num_timesteps) / cosine_f(i / num_timesteps), 0.999) for i in range(1000)
    ]
    np.testing.assert_allclose(diffusion.betas.numpy(), expected, rtol=1e-12)
    # Before the 0.999 clip binds, the cumulative product telescopes to f((t+1)/T) / f(0).
    unclipped = [cosine_f((t + 1) / num_timesteps) / cosine_f(0) for t in range(900)]
    np.testing.assert_allclose(diffusion.alphas_cumprod[:900].numpy(), unclipped, rtol=1e-10)
    assert diffusion.betas.max().item() == pytest.approx(0.999)


def test_snr_and_derived_tables():
    diffusion = GaussianDiffusion("linear", 1000)
    alpha_bar = linear_alpha_bar()
    assert diffusion.snr.dtype == torch.float64
    np.testing.assert_allclose(diffusion.snr.numpy(), alpha_bar / (1 - alpha_bar), rtol=1e-10)
    np.testing.assert_allclose(diffusion.alphas_cumprod_prev.numpy(), np.r_[1.0, alpha_bar[:-1]], rtol=1e-12)
    assert torch.equal(diffusion.timestep_map, torch.arange(1000))


# ----------------------------------------------------------------------------- posterior and losses


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_matches_gaussian_conditioning(schedule):
    diffusion = GaussianDiffusion(schedule, 1000)
    alpha_bar = diffusion.alphas_cumprod.numpy()
    t = torch.tensor([0, 1, 7, 500, 998, 999])
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 2, 3, 3, generator=generator, dtype=torch.float64) * 2 - 1
    x_t = torch.randn(6, 2, 3, 3, generator=generator, dtype=torch.float64)
    mean, variance, log_variance = diffusion.q_posterior_mean_variance(x0, x_t, t)
    for row, step in enumerate(t.tolist()):
        prev = alpha_bar[step - 1] if step > 0 else 1.0
        expected_mean, expected_var = conditional_gaussian(
            x0[row].numpy(), x_t[row].numpy(), prev, alpha_bar[step]
        )
        np.testing.assert_allclose(mean[row].numpy(), expected_mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(variance[row].numpy(), expected_var, rtol=1e-9, atol=1e-15)
        # log variance is clipped at t=0 (where it is 0) to its value at t=1
        clipped = expected_var if step > 0 else conditional_gaussian(0.0, 0.0, alpha_bar[0], alpha_bar[1])[1]
        np.testing.assert_allclose(log_variance[row].numpy(), math.log(clipped), rtol=1e-9)


def test_q_sample_is_the_marginal():
    diffusion = GaussianDiffusion("cosine", 1000)
    alpha_bar = diffusion.alphas_cumprod.numpy()
    x0 = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    noise = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 400, 999])
    x_t = diffusion.q_sample(x0, t, noise)
    for row, step in enumerate(t.tolist()):
        expected = math.sqrt(alpha_bar[step]) * x0[row] + math.sqrt(1 - alpha_bar[step]) * noise[row]
        torch.testing.assert_close(x_t[row], expected)


def reference_vb_bits(x0, x_t, eps, value, step, alpha_bar):
    """Independent float64 VB term (bits/dim) of one sample for the learned-range variance."""
    prev = alpha_bar[step - 1] if step > 0 else 1.0
    beta = 1 - alpha_bar[step] / prev
    post_var_1 = conditional_gaussian(0.0, 0.0, alpha_bar[0], alpha_bar[1])[1]
    true_var = conditional_gaussian(0.0, 0.0, prev, alpha_bar[step])[1]
    log_floor = math.log(true_var if step > 0 else post_var_1)
    total = 0.0
    for a, b, e, v in zip(x0.ravel(), x_t.ravel(), eps.ravel(), value.ravel()):
        pred_x0 = (b - math.sqrt(1 - alpha_bar[step]) * e) / math.sqrt(alpha_bar[step])
        model_mean, _ = conditional_gaussian(pred_x0, b, prev, alpha_bar[step])
        frac = (v + 1) / 2
        model_log_var = frac * math.log(beta) + (1 - frac) * log_floor
        if step == 0:
            total += -decoder_log_likelihood(a, model_mean, model_log_var)
        else:
            true_mean, _ = conditional_gaussian(a, b, prev, alpha_bar[step])
            total += gaussian_kl(true_mean, true_var, model_mean, math.exp(model_log_var))
    return total / x0.size / math.log(2)


@pytest.mark.parametrize("respacing", [None, "100"])
def test_training_losses_match_independent_float64(respacing):
    base = GaussianDiffusion("linear", 1000)
    diffusion = base if respacing is None else base.respace(respacing)
    alpha_bar = linear_alpha_bar()[diffusion.timestep_map.numpy()]
    generator = torch.Generator().manual_seed(1)
    batch = 5
    x0 = (torch.randint(0, 256, (batch, 2, 3, 3), generator=generator) / 127.5 - 1).double()
    x0[:, 0, 0, 0] = torch.tensor([-1.0, 1.0, -1.0, 1.0, 0.0], dtype=torch.float64)  # edge bins too
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    eps = noise + 0.3 * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    value = torch.rand(x0.shape, generator=generator, dtype=torch.float64) * 2 - 1
    t = torch.tensor([0, 0, 1, 37, diffusion.num_timesteps - 1])
    net = FixedNet(torch.cat([eps, value], dim=1))
    losses = diffusion.training_losses(net, x0, t, noise=noise)
    assert set(losses) == {"loss", "mse", "vb"} and all(v.shape == (batch,) for v in losses.values())
    scale = diffusion.num_timesteps / 1000
    for row, step in enumerate(t.tolist()):
        x_t = (
            math.sqrt(alpha_bar[step]) * x0[row].numpy() + math.sqrt(1 - alpha_bar[step]) * noise[row].numpy()
        )
        expected_vb = reference_vb_bits(
            x0[row].numpy(), x_t, eps[row].numpy(), value[row].numpy(), step, alpha_bar
        )
        assert losses["vb"][row].item() == pytest.approx(scale * expected_vb, rel=1e-8, abs=1e-10)
        expected_mse = float(np.mean((noise[row].numpy() - eps[row].numpy()) ** 2))
        assert losses["mse"][row].item() == pytest.approx(expected_mse, rel=1e-12)
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])
    # the net saw the original indices
    torch.testing.assert_close(net.calls[0], diffusion.timestep_map[t])


def test_vb_trains_only_the_variance():
    diffusion = GaussianDiffusion("linear", 1000)
    eps_param = torch.nn.Parameter(torch.randn(2, 1, 4, 4))
    value_param = torch.nn.Parameter(torch.rand(2, 1, 4, 4) * 2 - 1)
    net = lambda x, t, y: torch.cat([eps_param, value_param], dim=1)
    x0 = torch.rand(2, 1, 4, 4) * 2 - 1
    losses = diffusion.training_losses(net, x0, torch.tensor([0, 300]))
    losses["vb"].sum().backward()
    assert eps_param.grad is None or torch.count_nonzero(eps_param.grad) == 0
    assert torch.count_nonzero(value_param.grad) > 0
    losses["mse"].sum().backward()
    assert torch.count_nonzero(eps_param.grad) > 0


def test_fixed_sigma_has_zero_vb_and_the_fixed_variances():
    x0 = torch.randn(3, 2, 2, 2)
    eps = torch.randn(3, 2, 2, 2)
    large = GaussianDiffusion("linear", 1000, learn_sigma=False)
    losses = large.training_losses(FixedNet(eps), x0, torch.tensor([0, 5, 999]))
    assert torch.equal(losses["vb"], torch.zeros(3)) and torch.equal(losses["loss"], losses["mse"])
    alpha_bar = linear_alpha_bar()
    betas = 1 - alpha_bar / np.r_[1.0, alpha_bar[:-1]]
    post_var_1 = conditional_gaussian(0.0, 0.0, alpha_bar[0], alpha_bar[1])[1]
    t = torch.tensor([0, 5, 999])
    out = large.p_mean_variance(FixedNet(eps.double()), x0.double(), t)
    expected_large = [post_var_1, betas[5], betas[999]]
    np.testing.assert_allclose(out["variance"][:, 0, 0, 0].numpy(), expected_large, rtol=1e-9)
    small = GaussianDiffusion("linear", 1000, learn_sigma=False, fixed_variance="small")
    out = small.p_mean_variance(FixedNet(eps.double()), x0.double(), t)
    expected_small = [post_var_1] + [
        conditional_gaussian(0.0, 0.0, alpha_bar[s - 1], alpha_bar[s])[1] for s in (5, 999)
    ]
    np.testing.assert_allclose(out["variance"][:, 0, 0, 0].numpy(), expected_small, rtol=1e-9)


def test_learned_variance_endpoints_and_predicted_x0():
    diffusion = GaussianDiffusion("linear", 1000)
    x_t = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    eps = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([10, 10])
    value = torch.stack([-torch.ones(1, 2, 2), torch.ones(1, 2, 2)]).double()
    out = diffusion.p_mean_variance(FixedNet(torch.cat([eps, value], dim=1)), x_t, t)
    alpha_bar = linear_alpha_bar()
    beta = 1 - alpha_bar[10] / alpha_bar[9]
    posterior_var = conditional_gaussian(0.0, 0.0, alpha_bar[9], alpha_bar[10])[1]
    np.testing.assert_allclose(out["variance"][0].numpy(), posterior_var, rtol=1e-9)  # v = -1
    np.testing.assert_allclose(out["variance"][1].numpy(), beta, rtol=1e-9)  # v = +1
    expected_x0 = (x_t - math.sqrt(1 - alpha_bar[10]) * eps) / math.sqrt(alpha_bar[10])
    torch.testing.assert_close(out["pred_x0"], expected_x0)
    clipped = diffusion.p_mean_variance(
        FixedNet(torch.cat([eps * 50, value], dim=1)), x_t, t, clip_denoised=True
    )
    assert clipped["pred_x0"].abs().max() <= 1.0


# ----------------------------------------------------------------------------- respacing


def test_respacing_250_and_ddim50_keep_the_original_steps():
    kept = space_timesteps(1000, "250")
    assert len(kept) == 250 and kept[:3] == [0, 4, 8] and kept[-2:] == [995, 999]
    assert kept == [round(i * 999 / 249) for i in range(250)]
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, 250) == kept
    sections = space_timesteps(1000, "10,20")
    assert sections == [round(i * 499 / 9) for i in range(10)] + [
        500 + round(i * 499 / 19) for i in range(20)
    ]
    # uneven sections: 10 steps in 3 sections of 4, 3, 3
    assert space_timesteps(10, "2,1,3") == [0, 3, 4, 7, 8, 9]


def test_respaced_process_keeps_alpha_bar_and_maps_to_original_indices():
    base = GaussianDiffusion("cosine", 1000)
    for spec in ("250", "ddim50", "10,20"):
        respaced = base.respace(spec)
        kept = torch.tensor(space_timesteps(1000, spec))
        assert torch.equal(respaced.timestep_map, kept)
        assert respaced.num_timesteps == len(kept)
        torch.testing.assert_close(respaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-9, atol=1e-15)
        previous = torch.cat([torch.ones(1, dtype=torch.float64), base.alphas_cumprod[kept][:-1]])
        torch.testing.assert_close(respaced.betas, 1 - base.alphas_cumprod[kept] / previous)
    twice = base.respace("250").respace("ddim25")
    assert torch.equal(
        twice.timestep_map, torch.tensor(space_timesteps(1000, "250"))[list(range(0, 250, 10))]
    )


def test_to_dict_round_trips_through_json():
    base = GaussianDiffusion("cosine", 1000, learn_sigma=False, fixed_variance="small")
    for process in (base, base.respace("ddim50")):
        rebuilt = GaussianDiffusion(**json.loads(json.dumps(process.to_dict())))
        assert torch.equal(rebuilt.betas, process.betas)
        assert torch.equal(rebuilt.timestep_map, process.timestep_map)
        assert (rebuilt.learn_sigma, rebuilt.fixed_variance) == (False, "small")
    assert base.to_dict() == {
        "schedule": "cosine",
        "num_timesteps": 1000,
        "learn_sigma": False,
        "fixed_variance": "small",
    }


@pytest.mark.parametrize(
    "spec", ["abc", "", "0", "1001", "ddim7", "ddimx", "10,0", "600,600", [3, 2], [0, 10]]
)
def test_impossible_respacings_raise(spec):
    with pytest.raises(ValueError):
        GaussianDiffusion("cosine", 10 if spec == "ddim7" or isinstance(spec, list) else 1000).respace(spec)


# ----------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("learn_sigma", [True, False])
@pytest.mark.parametrize(
    "sampler, steps, eta",
    [("ddpm", None, 0.0), ("ddpm", 50, 0.0), ("ddim", 20, 0.0), ("ddim", "ddim25", 0.7)],
)
def test_oracle_net_recovers_x0(sampler, steps, eta, learn_sigma):
    num_timesteps = 1000 if steps is not None else 100
    diffusion = GaussianDiffusion("linear", num_timesteps, learn_sigma=learn_sigma)
    generator = torch.Generator().manual_seed(3)
    x0 = torch.rand(2, 3, 4, 4, generator=generator) * 2 - 1
    oracle = OracleNet(x0, linear_alpha_bar(num_timesteps), learn_sigma)
    sample = diffusion.sample(oracle, x0.shape, sampler=sampler, steps=steps, eta=eta, generator=generator)
    torch.testing.assert_close(sample, x0, atol=2e-4, rtol=0)
    sample64 = diffusion.sample(oracle, x0.shape, sampler=sampler, steps=steps, eta=eta, dtype=torch.float64)
    torch.testing.assert_close(sample64, x0.double(), atol=1e-9, rtol=0)


def test_net_receives_original_indices_in_reverse_order():
    diffusion = GaussianDiffusion("linear", 100)
    net = FixedNet(torch.zeros(3, 2, 2, 2))
    diffusion.sample(net, (3, 1, 2, 2), sampler="ddim", steps=5)
    assert [int(t[0]) for t in net.calls] == [80, 60, 40, 20, 0]
    assert all(torch.equal(t, t[:1].expand(3)) for t in net.calls)
    net.calls.clear()
    diffusion.sample(net, (3, 1, 2, 2), sampler="ddpm", steps="3")
    assert [int(t[0]) for t in net.calls] == [99, 50, 0]


def test_ddim_eta0_is_deterministic_given_the_start_noise():
    diffusion = GaussianDiffusion("linear", 1000)
    net = ConditionalNet()
    noise = torch.randn(2, 4, 3, 3)
    y = torch.tensor([0, 2])
    first = diffusion.sample(
        net, noise.shape, y, "ddim", 10, noise=noise, generator=torch.Generator().manual_seed(1)
    )
    second = diffusion.sample(
        net, noise.shape, y, "ddim", 10, noise=noise, generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(first, second)
    ddpm_a = diffusion.sample(
        net, noise.shape, y, "ddpm", 10, noise=noise, generator=torch.Generator().manual_seed(1)
    )
    ddpm_b = diffusion.sample(
        net, noise.shape, y, "ddpm", 10, noise=noise, generator=torch.Generator().manual_seed(2)
    )
    assert not torch.allclose(ddpm_a, ddpm_b)


@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 1.0)])
def test_same_seed_gives_identical_samples(sampler, eta):
    diffusion = GaussianDiffusion("cosine", 1000)
    net = ConditionalNet()
    y = torch.tensor([1, 0, 2])
    draw = lambda seed: diffusion.sample(
        net, (3, 4, 3, 3), y, sampler, 8, guidance=1.5, eta=eta, generator=torch.Generator().manual_seed(seed)
    )
    assert torch.equal(draw(7), draw(7))
    assert not torch.allclose(draw(7), draw(8))


def test_guidance_mixes_conditional_and_null_in_one_forward():
    net = ConditionalNet(channels=4, num_classes=3)
    x = torch.randn(2, 4, 3, 3)
    t = torch.tensor([500, 500])
    y = torch.tensor([2, 1])
    conditional = net(x, t, y)
    unconditional = net(x, t, torch.full_like(y, 3))
    torch.testing.assert_close(classifier_free_guidance(net, 1.0)(x, t, y), conditional)
    net.batch_sizes.clear()
    guided = classifier_free_guidance(net, 1.5)(x, t, y)
    assert net.batch_sizes == [4]
    torch.testing.assert_close(
        guided[:, :4], unconditional[:, :4] + 1.5 * (conditional[:, :4] - unconditional[:, :4])
    )
    torch.testing.assert_close(
        guided[:, 4:], conditional[:, 4:]
    )  # learned variance from the conditional half
    first_three = classifier_free_guidance(net, 1.5, channels=3)(x, t, y)
    torch.testing.assert_close(first_three[:, :3], guided[:, :3])
    torch.testing.assert_close(first_three[:, 3:], conditional[:, 3:])


def test_sampling_guidance_batches_both_halves_and_scale_one_is_conditional():
    diffusion = GaussianDiffusion("linear", 1000)
    net = ConditionalNet()
    noise = torch.randn(2, 4, 3, 3)
    y = torch.tensor([0, 1])
    guided = diffusion.sample(net, noise.shape, y, "ddim", 6, guidance=2.0, noise=noise)
    assert net.batch_sizes == [4] * 6
    net.batch_sizes.clear()
    plain = diffusion.sample(net, noise.shape, y, "ddim", 6, guidance=1.0, noise=noise)
    assert net.batch_sizes == [2] * 6
    scale_one = diffusion.sample(net, noise.shape, y, "ddim", 6, guidance=1.0 + 1e-12, noise=noise)
    torch.testing.assert_close(scale_one, plain)
    assert not torch.allclose(guided, plain)


def test_progress_bar_runs(capsys):
    diffusion = GaussianDiffusion("cosine", 10)
    diffusion.sample(FixedNet(torch.zeros(1, 2, 2, 2)), (1, 1, 2, 2), progress=True)
    assert "ddpm" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad input


def test_bad_construction_raises():
    with pytest.raises(ValueError, match="schedule"):
        GaussianDiffusion("quadratic")
    with pytest.raises(ValueError, match=">= 1"):
        GaussianDiffusion("linear", 0)
    with pytest.raises(ValueError, match="fixed_variance"):
        GaussianDiffusion(fixed_variance="medium")
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        GaussianDiffusion(num_timesteps=3, betas=[0.1, 0.2])
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        GaussianDiffusion(num_timesteps=2, betas=[0.1, 1.0])
    with pytest.raises(ValueError, match="> 20"):
        GaussianDiffusion("linear", 20)


def test_bad_timesteps_and_shapes_raise():
    diffusion = GaussianDiffusion("linear", 100)
    x0 = torch.randn(2, 1, 2, 2)
    good = FixedNet(torch.zeros(2, 2, 2, 2))
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        diffusion.training_losses(good, x0, torch.tensor([0, 100]))
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        diffusion.q_sample(x0, torch.tensor([-1, 3]))
    with pytest.raises(TypeError, match="integer"):
        diffusion.training_losses(good, x0, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        diffusion.training_losses(good, x0, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\(2, 2, 2, 2\)"):
        diffusion.training_losses(FixedNet(torch.zeros(2, 1, 2, 2)), x0, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\(2, 2, 2, 2\)"):
        diffusion.sample(FixedNet(torch.zeros(2, 3, 2, 2)), (2, 1, 2, 2))


def test_bad_sampling_arguments_raise():
    diffusion = GaussianDiffusion("linear", 100)
    net = ConditionalNet(channels=4)
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="sampler"):
        diffusion.sample(net, (2, 4, 2, 2), y, sampler="euler")
    with pytest.raises(ValueError, match=r"\[1, 100\]"):
        diffusion.sample(net, (2, 4, 2, 2), y, steps=101)
    with pytest.raises(ValueError, match="eta"):
        diffusion.sample(net, (2, 4, 2, 2), y, sampler="ddpm", eta=0.5)
    with pytest.raises(ValueError, match="y=None"):
        diffusion.sample(net, (2, 4, 2, 2), None, guidance=1.5)
    with pytest.raises(ValueError, match="num_classes"):
        diffusion.sample(FixedNet(torch.zeros(4, 8, 2, 2)), (2, 4, 2, 2), y, guidance=1.5)
    with pytest.raises(ValueError, match="guidance_channels"):
        diffusion.sample(net, (2, 4, 2, 2), y, steps=2, guidance=1.5, guidance_channels=5)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        diffusion.sample(net, (2, 4, 2, 2), torch.tensor([0, 1, 2]))


def test_ddim_matches_diffusers_scheduler():
    schedulers = pytest.importorskip("diffusers.schedulers")
    scheduler = schedulers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
    )
    scheduler.set_timesteps(50)
    diffusion = GaussianDiffusion("linear", 1000, learn_sigma=False)
    assert scheduler.timesteps.flip(0).tolist() == diffusion.respace("ddim50").timestep_map.tolist()
    net = perturbed_oracle(1000, learn_sigma=False)
    noise = torch.randn(2, 4, 3, 3)
    y = torch.tensor([0, 2])
    ours = diffusion.sample(net, noise.shape, y, "ddim", 50, noise=noise)
    x = noise
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(net(x, t.expand(2), y), t, x, eta=0.0).prev_sample
    torch.testing.assert_close(ours, x, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "variance_type, learn_sigma, fixed_variance",
    [("fixed_large", False, "large"), ("fixed_small", False, "small"), ("learned_range", True, "large")],
)
def test_ddpm_matches_diffusers_scheduler(variance_type, learn_sigma, fixed_variance):
    schedulers = pytest.importorskip("diffusers.schedulers")
    diffusion = GaussianDiffusion("linear", 100, learn_sigma=learn_sigma, fixed_variance=fixed_variance)
    scheduler = schedulers.DDPMScheduler(
        num_train_timesteps=100,
        trained_betas=diffusion.betas.numpy(),
        variance_type=variance_type,
        clip_sample=False,
    )
    scheduler.set_timesteps(100)
    net = perturbed_oracle(100, learn_sigma=learn_sigma)
    noise = torch.randn(2, 4, 3, 3)
    y = torch.tensor([1, 2])
    # both draw one standard normal of the sample's shape per step t > 0 from the generator
    ours = diffusion.sample(
        net, noise.shape, y, "ddpm", noise=noise, generator=torch.Generator().manual_seed(5)
    )
    generator = torch.Generator().manual_seed(5)
    x = noise
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(net(x, t.expand(2), y), t, x, generator=generator).prev_sample
    torch.testing.assert_close(ours, x, atol=2e-5, rtol=1e-5)
