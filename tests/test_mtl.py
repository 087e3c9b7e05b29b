"""mtl/: the mathematics of every balancer and weighting, the fast Gram path and AMP."""

from __future__ import annotations

import math

import pytest
import torch
from zoo.models import DiT
from zoo.mtl.gram import GramCapture, cluster_jacobian

from tests.mtl_nets import TinyNet, cluster_losses, make_batch
from zoo import mtl

K = 4


def _random_gram(k: int, rank: int, seed: int, positive_column: bool = False) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    jacobian = torch.randn(k, rank, generator=generator, dtype=torch.float64)
    if positive_column:  # a shared positive direction: no non-negative null vector, so a solution exists
        jacobian[:, 0] = jacobian[:, 0].abs() + 0.5
    return jacobian @ jacobian.T


def _net_and_batch(seed: int = 0):
    torch.manual_seed(seed)
    return TinyNet().double(), make_batch(K, 3, seed=seed)


# ---- registry --------------------------------------------------------------------------------------
def test_registry_lists_builds_and_rebuilds_from_config():
    assert set(mtl.list_balancers()) >= {"linear", "uw", "nash", "pcgrad", "famo", "imtl"}
    assert set(mtl.list_weightings()) == {"none", "minsnr", "p2", "uwc"}
    for name in mtl.list_balancers():
        balancer = mtl.build(name, 3)
        rebuilt = mtl.build(**balancer.config())
        assert type(rebuilt) is type(balancer) and rebuilt.config() == balancer.config()
    with pytest.raises(KeyError, match="valid names.*linear"):
        mtl.build("nashh", 3)
    with pytest.raises(ValueError, match="positive int"):
        mtl.build("linear", 0)
    assert mtl.build_weighting("none") is None
    weighting = mtl.build_weighting("minsnr", gamma=3.0)
    assert mtl.build_weighting(**weighting.config()).gamma == 3.0


# ---- Nash ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 3, 5, 8, 16])
def test_nash_fixed_point_on_positive_definite_gram(k):
    for seed in range(3):
        gram = _random_gram(k, k + 3, seed)
        alpha = mtl.nash_weights(gram)
        assert (alpha > 0).all()
        torch.testing.assert_close(gram @ alpha, 1 / alpha, rtol=1e-6, atol=0)


@pytest.mark.parametrize("k,rank", [(3, 2), (5, 2), (8, 4)])
def test_nash_fixed_point_on_singular_gram(k, rank):
    gram = _random_gram(k, rank, seed=k, positive_column=True)
    assert torch.linalg.matrix_rank(gram) == rank
    alpha = mtl.nash_weights(gram)
    assert (alpha > 0).all()
    torch.testing.assert_close(gram @ alpha, 1 / alpha, rtol=1e-6, atol=0)


def test_nash_identity_diagonal_scaling_and_permutation():
    torch.testing.assert_close(mtl.nash_weights(torch.eye(4)), torch.ones(4, dtype=torch.float64))
    diagonal = torch.tensor([1.0, 4.0, 9.0, 0.25], dtype=torch.float64)
    torch.testing.assert_close(mtl.nash_weights(torch.diag(diagonal)), diagonal.rsqrt())
    gram = _random_gram(5, 7, seed=11)
    alpha = mtl.nash_weights(gram)
    for c in (1e-6, 0.3, 250.0):
        torch.testing.assert_close(mtl.nash_weights(c * gram), alpha / math.sqrt(c), rtol=1e-8, atol=0)
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(mtl.nash_weights(gram[perm][:, perm]), alpha[perm], rtol=1e-8, atol=0)


def test_nash_degenerate_grams():
    gram = torch.zeros(3, 3, dtype=torch.float64)
    gram[:2, :2] = _random_gram(2, 3, seed=1)
    alpha = mtl.nash_weights(gram)  # task 2 has a zero gradient: weight 0, the others solved alone
    assert alpha[2] == 0
    torch.testing.assert_close(gram[:2, :2] @ alpha[:2], 1 / alpha[:2], rtol=1e-6, atol=0)
    opposite = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)  # no solution: ridge fallback
    alpha = mtl.nash_weights(opposite)
    assert torch.isfinite(alpha).all() and (alpha > 0).all()
    torch.testing.assert_close(alpha[0], alpha[1])


# ---- PCGrad ----------------------------------------------------------------------------------------
def test_pcgrad_hand_computed_projections():
    g1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g2 = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    # g1' = g1 - (-1/2) g2 = (0.5, 0.5); g2' = g2 - (-1/1) g1 = (0, 1)
    result = mtl.pcgrad(torch.stack([g1, g2]), orders=[[0, 1], [1, 0]])
    torch.testing.assert_close(result, torch.tensor([0.5, 1.5], dtype=torch.float64))
    g3 = torch.tensor([0.0, -1.0], dtype=torch.float64)
    grads = torch.stack([g1, g2, g3])
    # task 1 visiting (2, 0): <g2, g3> = -1 -> g2 + g3 = (-1, 0); then <(-1, 0), g1> = -1 -> (0, 0)
    # task 1 visiting (0, 2): <g2, g1> = -1 -> (0, 1); then <(0, 1), g3> = -1 -> (0, 0)
    # task 0: <g1, g2> = -1 -> (0.5, 0.5); <(0.5, 0.5), g3> = -0.5 -> (0.5, 0)
    # task 2 order (1, 0): <g3, g2> = -1 -> g3 + g2/2 = (-0.5, -0.5); then <., g1> = -0.5 -> (0, -0.5)
    result = mtl.pcgrad(grads, orders=[[0, 1, 2], [1, 2, 0], [2, 1, 0]])
    torch.testing.assert_close(result, torch.tensor([0.5, -0.5], dtype=torch.float64))


def test_pcgrad_without_conflicts_is_the_plain_sum():
    grads = torch.rand(4, 10, dtype=torch.float64)
    torch.testing.assert_close(mtl.pcgrad(grads, generator=torch.Generator().manual_seed(0)), grads.sum(0))
    torch.testing.assert_close(mtl.pcgrad_weights(grads @ grads.T), torch.ones(4, dtype=torch.float64))


def test_pcgrad_gram_coefficients_equal_explicit_projections():
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        grads = torch.randn(5, 7, dtype=torch.float64, generator=generator)
        orders = mtl.random_orders(5, generator)
        coefficients = mtl.pcgrad_weights(grads @ grads.T, orders)
        torch.testing.assert_close(coefficients @ grads, mtl.pcgrad(grads, orders), rtol=1e-12, atol=1e-12)


def test_pcgrad_matches_torchjd():
    aggregation = pytest.importorskip("torchjd.aggregation")
    grads = torch.randn(5, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(123)
    expected = aggregation.PCGrad()(grads)
    torch.manual_seed(123)  # torchjd draws one torch.randperm per task from the global generator
    orders = [torch.randperm(5) for _ in range(5)]
    torch.testing.assert_close(mtl.pcgrad(grads, orders), expected, rtol=1e-10, atol=1e-10)


# ---- IMTL-G ----------------------------------------------------------------------------------------
def test_imtl_equal_projections_and_torchjd():
    grads = torch.randn(4, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weights = mtl.imtl_weights(grads @ grads.T)
    update = weights @ grads
    projections = grads @ update / grads.norm(dim=1)
    torch.testing.assert_close(projections, projections[0].expand(4), rtol=1e-10, atol=0)
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    aggregation = pytest.importorskip("torchjd.aggregation")
    torch.testing.assert_close(weights, aggregation.IMTLGWeighting()(grads @ grads.T), rtol=1e-8, atol=1e-10)


# ---- UW --------------------------------------------------------------------------------------------
def test_uw_optimum_and_parameter_group():
    losses = torch.tensor([0.4, 1.3, 2.0, 0.05], dtype=torch.float64)
    log_vars = torch.log(losses / 4).requires_grad_()
    (grad,) = torch.autograd.grad(mtl.uw_loss(losses, log_vars), log_vars)
    torch.testing.assert_close(grad, torch.zeros(4, dtype=torch.float64), atol=1e-15, rtol=0)
    off = (log_vars.detach() + 0.3).requires_grad_()
    (grad,) = torch.autograd.grad(mtl.uw_loss(losses, off), off)
    assert (grad > 0).all()  # above the optimum the objective increases
    balancer = mtl.build("uw", 4, lr=0.01)
    (group,) = balancer.parameter_groups()
    assert group["params"][0] is balancer.log_vars and group["lr"] == 0.01 and group["weight_decay"] == 0.0


# ---- FAMO ------------------------------------------------------------------------------------------
def test_famo_backward_and_update_against_float64_rederivation():
    net, batch = _net_and_batch(1)
    params = list(net.parameters())
    balancer = mtl.build("famo", K, min_losses=[0.0, 0.01, 0.0, 0.02])
    balancer.logits.copy_(torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64))
    losses = cluster_losses(net, batch, K)
    balancer.backward(losses, params)
    # re-derivation: c * sum z log(L - b + eps), c detached, z constant
    w = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64, requires_grad=True)
    z = torch.softmax(w, 0).detach()
    b = torch.tensor([0.0, 0.01, 0.0, 0.02], dtype=torch.float64)
    losses = cluster_losses(net, batch, K)
    c = 1 / (z / (losses.detach() - b + 1e-8)).sum()
    expected = torch.autograd.grad(c * (z * torch.log(losses - b + 1e-8)).sum(), params)
    for param, grad in zip(params, expected):
        torch.testing.assert_close(param.grad, grad, rtol=1e-10, atol=1e-12)
    # after the step: delta through softmax's Jacobian, one torch Adam step with L2 weight decay
    new_losses = losses.detach() * torch.tensor([0.9, 0.99, 0.8, 0.95], dtype=torch.float64)
    balancer.after_step(new_losses)
    delta = torch.log(losses.detach() - b + 1e-8) - torch.log(new_losses - b + 1e-8)
    (w.grad,) = torch.autograd.grad(torch.softmax(w, 0), w, grad_outputs=delta)
    adam = torch.optim.Adam([w], lr=0.025, weight_decay=1e-3)
    adam.step()
    torch.testing.assert_close(balancer.logits, w.detach(), rtol=1e-12, atol=1e-14)
    state = balancer.state_dict()
    assert {"logits", "exp_avg", "exp_avg_sq", "adam_step"} <= set(state)


def test_famo_weights_move_toward_the_lagging_cluster():
    target = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    speed = torch.tensor([1.0, 1.0, 0.05], dtype=torch.float64)  # cluster 2 learns 20x slower

    def losses() -> torch.Tensor:
        return speed * (theta - target) ** 2 + 0.1

    balancer = mtl.build("famo", 3)
    optimizer = torch.optim.SGD([theta], lr=0.1)
    for _ in range(20):
        optimizer.zero_grad()
        logs = balancer.backward(losses(), [theta])
        optimizer.step()
        with torch.no_grad():
            balancer.after_step(losses())
    z = torch.softmax(balancer.logits, 0)
    assert z[2] > 1 / 3 + 0.05 and z[2] > z[0] and z[2] > z[1]
    torch.testing.assert_close(logs["weights"].sum(), torch.tensor(1.0, dtype=torch.float64))


# ---- the fast Gram path ---------------------------------------------------------------------------
def test_fast_gram_equals_k_backward_reference():
    net, batch = _net_and_batch(2)
    params = list(net.parameters())
    with GramCapture(net, batch[4], K) as capture:
        losses = cluster_losses(net, batch, K)
    gram = capture.gram(losses.sum(), params)
    jacobian = cluster_jacobian(losses, params)
    torch.testing.assert_close(gram, jacobian @ jacobian.T, rtol=1e-10, atol=1e-12)
    subset = [net.shared.weight, net.label.weight, net.norm.bias]  # Gram over a parameter subset
    with GramCapture(net, batch[4], K) as capture:
        losses = cluster_losses(net, batch, K)
    jacobian = cluster_jacobian(losses, subset)
    torch.testing.assert_close(
        capture.gram(losses.sum(), subset), jacobian @ jacobian.T, rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("keep", ["auto", "inputs", "grads", "backward"])
@pytest.mark.parametrize("name", ["nash", "pcgrad", "imtl"])
def test_fast_path_grads_equal_reference_engine(name, keep):
    """Every way of building the update (kept output gradients, kept cluster gradients, a second
    backward) equals the K-backward reference; TinyNet has Linear, Conv2d, Embedding, a Linear used
    twice and a LayerNorm (no fast path: local VJPs)."""
    grads = {}
    for engine in ("hooks", "autograd"):
        net, batch = _net_and_batch(3)
        balancer = mtl.build(name, K, update_every=1, engine=engine, keep=keep)
        for _ in range(2):
            net.zero_grad()
            with balancer.capture(net, batch[4]):
                losses = cluster_losses(net, batch, K)
            logs = balancer.backward(losses, net.parameters())
        grads[engine] = ([p.grad.clone() for p in net.parameters()], logs["weights"])
    for fast, slow in zip(*(grads[e][0] for e in ("hooks", "autograd"))):
        torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grads["hooks"][1], grads["autograd"][1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("keep", ["auto", "inputs", "grads"])
def test_kept_update_is_one_pass_and_accumulates(keep):
    """keep= builds .grad from the Gram pass alone: the graph is freed (no second backward ran) and
    the update is added to an existing .grad, as autograd accumulates."""
    net, batch = _net_and_batch(10)
    params = list(net.parameters())
    earlier = [torch.randn_like(p) for p in params]
    for p, g in zip(params, earlier):
        p.grad = g.clone()
    with GramCapture(net, batch[4], K) as capture:
        losses = cluster_losses(net, batch, K)
    jacobian = cluster_jacobian(losses, params)
    gram = capture.gram(losses.sum(), params, keep=keep)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        losses.sum().backward()
    coefficients = torch.tensor([0.3, -1.2, 2.0, 0.7], dtype=torch.float64)
    update = capture.update(coefficients)
    torch.testing.assert_close(gram, jacobian @ jacobian.T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        torch.cat([u.reshape(-1) for u in update]), coefficients @ jacobian, rtol=1e-10, atol=1e-12
    )
    with pytest.raises(RuntimeError, match="preceding gram"):
        capture.update(coefficients)
    balancer = mtl.build("imtl", K, keep=keep)
    with balancer.capture(net, batch[4]):
        losses = cluster_losses(net, batch, K)
    jacobian = cluster_jacobian(losses, params)
    logs = balancer.backward(losses, params)
    for p, g, row in zip(params, earlier, (logs["weights"] @ jacobian).split([p.numel() for p in params])):
        torch.testing.assert_close(p.grad, g + row.reshape(p.shape), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="keep must be"):
        mtl.build("nash", K, keep="everything")


def test_pcgrad_balancer_equals_explicit_projection_of_cluster_gradients():
    net, batch = _net_and_batch(4)
    params = list(net.parameters())
    balancer = mtl.build("pcgrad", K, seed=7)
    with balancer.capture(net, batch[4]):
        losses = cluster_losses(net, batch, K)
    jacobian = cluster_jacobian(losses, params)
    balancer.backward(losses, params)
    expected = mtl.pcgrad(jacobian, mtl.random_orders(K, torch.Generator().manual_seed(7)))
    torch.testing.assert_close(
        torch.cat([p.grad.reshape(-1) for p in params]), expected, rtol=1e-9, atol=1e-12
    )


def test_nash_holds_weights_between_updates_and_clips():
    net, batch = _net_and_batch(5)
    params = list(net.parameters())
    balancer = mtl.build("nash", K, update_every=3, max_grad_norm=0.01)
    weights = []
    for step in range(4):
        net.zero_grad()
        with balancer.capture(net, batch[4]):
            losses = cluster_losses(net, batch, K)
        logs = balancer.backward(losses, params)
        assert logs["updated"] == (step % 3 == 0)
        norm = torch.cat([p.grad.reshape(-1) for p in params]).norm()
        assert norm <= 0.01 * (1 + 1e-9) < logs["grad_norm_before_clip"]
        weights.append(logs["weights"])
    torch.testing.assert_close(weights[1], weights[0])
    torch.testing.assert_close(weights[2], weights[0])
    alpha = logs["alpha"] if "alpha" in logs else weights[3] * K
    jacobian = cluster_jacobian(cluster_losses(net, batch, K), params)
    gram = jacobian @ jacobian.T
    gram = gram / torch.linalg.matrix_norm(gram)
    torch.testing.assert_close(gram @ alpha, 1 / alpha, rtol=1e-6, atol=0)
    assert int(balancer.state_dict()["step"]) == 4


def test_update_step_requires_capture():
    net, batch = _net_and_batch(0)
    balancer = mtl.build("nash", K)
    with pytest.raises(RuntimeError, match="capture"):
        balancer.backward(cluster_losses(net, batch, K), net.parameters())


@pytest.mark.parametrize("name", ["linear", "uw", "famo", "nash", "pcgrad", "imtl"])
def test_grads_match_finite_differences(name):
    """.grad is the directional derivative of sum_k c_k L_k (UW: of its objective) with c as logged."""
    net, batch = _net_and_batch(6)
    params = list(net.parameters())
    options = {"max_grad_norm": None} if name == "nash" else {}
    balancer = mtl.build(name, K, **options)
    with balancer.capture(net, batch[4]):
        losses = cluster_losses(net, batch, K)
    logs = balancer.backward(losses, params)
    direction = [torch.randn_like(p) for p in params]
    analytic = sum((p.grad * d).sum() for p, d in zip(params, direction))
    log_vars = balancer.log_vars.detach().double() if name == "uw" else None

    def objective() -> float:
        values = cluster_losses(net, batch, K)
        if name == "uw":
            return float(mtl.uw_loss(values, log_vars))
        return float((logs["weights"].double() * values).sum())

    step = 1e-6
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(step * d)
        plus = objective()
        for p, d in zip(params, direction):
            p.sub_(2 * step * d)
        minus = objective()
    assert abs((plus - minus) / (2 * step) - float(analytic)) <= 1e-6 * max(1.0, abs(float(analytic)))


# ---- AMP -------------------------------------------------------------------------------------------
def test_grad_scaler_scaled_domain_and_unscaled_gram():
    results = {}
    for use_scaler in (False, True):
        net, batch = _net_and_batch(7)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12) if use_scaler else None
        balancer = mtl.build("nash", K, max_grad_norm=1e-3)
        with balancer.capture(net, batch[4]):
            losses = cluster_losses(net, batch, K)
        logs = balancer.backward(losses, net.parameters(), scaler=scaler)
        results[use_scaler] = (logs["weights"], [p.grad.clone() for p in net.parameters()])
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-9, atol=0)
    for scaled_grad, grad in zip(results[True][1], results[False][1]):
        torch.testing.assert_close(scaled_grad, 2.0**12 * grad, rtol=1e-6, atol=1e-12)


def test_bf16_autocast_gram_close_to_float32():
    torch.manual_seed(8)
    net = TinyNet()
    batch = make_batch(K, 3, seed=8, dtype=torch.float32)
    params = list(net.parameters())
    with GramCapture(net, batch[4], K) as capture:
        exact = cluster_losses(net, batch, K)
    reference = capture.gram(exact.sum(), params)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    balancer = mtl.build("imtl", K)
    with balancer.capture(net, batch[4]), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = cluster_losses(net, batch, K)
    logs = balancer.backward(losses.float(), params, scaler=scaler)
    assert logs["gram_finite"]
    torch.testing.assert_close(logs["cosine"], mtl.cosine_matrix(reference), atol=0.05, rtol=0)
    torch.testing.assert_close(logs["weights"], mtl.imtl_weights(reference), atol=0.05, rtol=0.1)
    assert all(torch.isfinite(p.grad).all() for p in params)


# ---- weightings ------------------------------------------------------------------------------------
def _diffusion_errors(snr: torch.Tensor):
    """Per-sample MSEs of one prediction error, measured in eps, x0 and v space (float64)."""
    generator = torch.Generator().manual_seed(0)
    a = (snr / (1 + snr)).sqrt()[:, None]
    s = (1 / (1 + snr)).sqrt()[:, None]
    x0, eps = torch.randn(2, len(snr), 16, generator=generator, dtype=torch.float64)
    x_t = a * x0 + s * eps
    eps_hat = eps + 0.1 * torch.randn(len(snr), 16, generator=generator, dtype=torch.float64)
    x0_hat = (x_t - s * eps_hat) / a
    v, v_hat = a * eps - s * x0, a * eps_hat - s * x0_hat
    mse = lambda u, w: (u - w).pow(2).mean(1)
    return mse(eps, eps_hat), mse(x0, x0_hat), mse(v, v_hat)


def test_minsnr_and_p2_formulas_per_prediction_type():
    snr = torch.tensor([0.01, 0.5, 5.0, 20.0, 300.0], dtype=torch.float64)
    t = torch.arange(5)
    ones = torch.ones(5, dtype=torch.float64)
    minsnr = mtl.build_weighting("minsnr")
    torch.testing.assert_close(minsnr(ones, t, snr, "eps"), torch.tensor([1, 1, 1, 0.25, 5 / 300.0]).double())
    torch.testing.assert_close(minsnr(ones, t, snr, "x0"), torch.tensor([0.01, 0.5, 5, 5, 5]).double())
    torch.testing.assert_close(
        minsnr(ones, t, snr, "v"), torch.tensor([0.01 / 1.01, 0.5 / 1.5, 5 / 6, 5 / 21, 5 / 301]).double()
    )
    p2 = mtl.build_weighting("p2", k=1.0, gamma=0.5)
    torch.testing.assert_close(p2(ones, t, snr, "eps"), 1 / (1 + snr).sqrt())
    # the same effective objective whatever the network predicts
    eps_mse, x0_mse, v_mse = _diffusion_errors(snr)
    for weighting in (minsnr, p2):
        eps_weighted = weighting(eps_mse, t, snr, "eps")
        torch.testing.assert_close(weighting(x0_mse, t, snr, "x0"), eps_weighted, rtol=1e-9, atol=0)
        torch.testing.assert_close(weighting(v_mse, t, snr, "v"), eps_weighted, rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match="eps"):
        minsnr(ones, t, snr, "score")


def test_uwc_objective_and_optimum():
    weighting = mtl.build_weighting("uwc")
    assert 100 <= sum(p.numel() for p in weighting.parameters()) <= 1000
    snr = torch.linspace(10, 0.01, 1000)
    t = torch.tensor([0, 250, 999])
    losses = torch.tensor([0.5, 2.0, 0.1])
    torch.testing.assert_close(weighting(losses, t, snr), losses)  # zero-initialised: u = 0
    with torch.no_grad():
        weighting.linear.weight.normal_()
    u = weighting.log_variance(t, 1000)
    torch.testing.assert_close(weighting(losses, t, snr), losses * torch.exp(-u) + u)
    # the optimum of loss * exp(-u) + u is u = log(loss): the gradient vanishes there
    with torch.no_grad():
        weighting.linear.weight.zero_()
        weighting.linear.bias.fill_(math.log(0.7))
    weighting(torch.full((3,), 0.7), t, snr).sum().backward()
    torch.testing.assert_close(weighting.linear.bias.grad, torch.zeros(1), atol=1e-6, rtol=0)


def test_fast_gram_on_a_dit_equals_reference():

    torch.manual_seed(9)
    net = DiT(
        input_size=8,
        patch_size=2,
        in_channels=2,
        hidden_size=16,
        depth=2,
        num_heads=2,
        num_classes=5,
        class_dropout_prob=0.1,
    ).double()
    cluster = torch.arange(6) % 3
    x = torch.randn(6, 2, 8, 8, dtype=torch.float64)
    t = cluster * 300 + torch.randint(0, 300, (6,))
    y = torch.randint(0, 5, (6,))
    params = [p for p in net.parameters() if p.requires_grad]
    with torch.no_grad():  # adaLN-Zero starts at zero: give every layer a gradient
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
    torch.manual_seed(10)  # the label dropout draw: the same in every forward below
    with GramCapture(net, cluster, 3) as capture:
        per_sample = net(x, t, y).pow(2).mean(dim=(1, 2, 3))
        losses = torch.zeros(3, dtype=torch.float64).index_add(0, cluster, per_sample) / 2
    jacobian = cluster_jacobian(losses, params)
    torch.testing.assert_close(
        capture.gram(losses.sum(), params), jacobian @ jacobian.T, rtol=1e-10, atol=1e-14
    )
    for keep in ("auto", "inputs", "grads"):  # the update built from the Gram pass, on a DiT
        torch.manual_seed(10)
        with GramCapture(net, cluster, 3) as capture:
            per_sample = net(x, t, y).pow(2).mean(dim=(1, 2, 3))
            losses = torch.zeros(3, dtype=torch.float64).index_add(0, cluster, per_sample) / 2
        torch.testing.assert_close(
            capture.gram(losses.sum(), params, keep=keep), jacobian @ jacobian.T, rtol=1e-10, atol=1e-14
        )
        coefficients = torch.tensor([1.5, -0.25, 0.6], dtype=torch.float64)
        update = torch.cat([u.reshape(-1) for u in capture.update(coefficients)])
        torch.testing.assert_close(update, coefficients @ jacobian, rtol=1e-10, atol=1e-13)


class _Awkward(torch.nn.Module):
    """A module with its own parameter AND children: a Linear applied to that parameter (its output is
    upstream of the module's root output, so a backward to the roots skips it) and a Linear whose
    output the loss never uses."""

    def __init__(self) -> None:
        super().__init__()
        self.query = torch.nn.Parameter(torch.randn(1, 3, dtype=torch.float64))
        self.lift = torch.nn.Linear(3, 3).double()
        self.inp = torch.nn.Linear(2, 3).double()
        self.unused = torch.nn.Linear(2, 3).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.unused(x)
        return torch.tanh(self.inp(x)) * self.lift(self.query.expand(len(x), 3))


@pytest.mark.parametrize("keep", [None, "auto", "inputs", "grads"])
def test_skipped_and_unused_outputs_get_exact_gradients(keep):
    torch.manual_seed(11)
    net = torch.nn.Sequential(_Awkward(), torch.nn.Linear(3, 2).double())
    x = torch.randn(8, 2, dtype=torch.float64)
    cluster = torch.arange(8) % K
    params = list(net.parameters())

    def losses() -> torch.Tensor:
        per_sample = net(x).pow(2).sum(1)
        return torch.zeros(K, dtype=torch.float64).index_add(0, cluster, per_sample) / 2

    with GramCapture(net, cluster, K) as capture:
        values = losses()
    jacobian = cluster_jacobian(values, params)
    assert jacobian[:, : net[0].query.numel()].abs().max() > 0  # the skipped path carries gradient
    _assert_gram_and_update(capture, values, params, jacobian, keep, update_atol=1e-14)


def _assert_gram_and_update(capture, values, params, jacobian, keep, update_atol):
    """The capture's Gram matrix equals J J^T and (with a keep mode) its update c J, for 4 clusters."""
    torch.testing.assert_close(
        capture.gram(values.sum(), params, keep=keep), jacobian @ jacobian.T, rtol=1e-10, atol=1e-14
    )
    if keep is not None:
        coefficients = torch.tensor([0.5, -2.0, 1.0, 3.0], dtype=torch.float64)
        update = torch.cat([u.reshape(-1) for u in capture.update(coefficients)])
        torch.testing.assert_close(update, coefficients @ jacobian, rtol=1e-10, atol=update_atol)


LAYOUTS = {  # K = 4, batch 12: how the clusters lie in the batch
    "equal slices": [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3],  # one batched product per layer, no reordering
    "unequal runs": [2, 2, 0, 0, 0, 0, 3, 1, 1, 1, 1, 1],  # contiguous: slices, no reordering
    "interleaved": [0, 1, 2, 3, 0, 1, 2, 0, 1, 0, 0, 2],  # the forward runs on the batch sorted by cluster
    "empty cluster": [0, 2, 3, 0, 2, 3, 0, 2, 3, 0, 2, 3],  # cluster 1 has no sample
}


@pytest.mark.parametrize("keep", [None, "auto", "inputs", "grads"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_gram_and_update_equal_reference_for_every_cluster_layout(layout, keep):
    """However the clusters lie in the batch (the capture may sort the batch for the net's forward),
    the net's output keeps the caller's order and the Gram matrix and update equal the K-backward
    reference; a layer called outside the net's forward (on the caller's order) is exact too."""
    net, (x, y, t, target, _) = _net_and_batch(12)
    cluster = torch.tensor(LAYOUTS[layout])
    side = torch.randn(12, 5, 6, dtype=torch.float64)  # fed to net.shared directly, outside net's forward
    params = list(net.parameters())
    expected_out = net(x, t, y)

    def losses() -> torch.Tensor:
        per_sample = (net(x, t, y) - target).pow(2).mean(dim=(1, 2)) * (1 + t.to(x.dtype) / 20)
        per_sample = per_sample + net.shared(side).pow(2).mean(dim=(1, 2))
        counts = torch.bincount(cluster, minlength=K).clamp_min(1).to(per_sample.dtype)
        return torch.zeros(K, dtype=per_sample.dtype).index_add(0, cluster, per_sample) / counts

    with GramCapture(net, cluster, K) as capture:
        torch.testing.assert_close(net(x, t, y), expected_out, rtol=1e-13, atol=1e-15)
        values = losses()
    assert not net._forward_pre_hooks and not net._forward_hooks  # the capture's hooks are gone
    jacobian = cluster_jacobian(values, params)
    if layout == "empty cluster":
        assert jacobian[1].abs().max() == 0
    _assert_gram_and_update(capture, values, params, jacobian, keep, update_atol=1e-13)
