"""One path through a training step: `model.loss` -> `model.backward` -> one clip -> `model.after_step`.

The trainer clips the accumulated, unscaled gradient once, with the tighter of `TrainConfig.grad_clip`
and the balancer's `max_grad_norm`. With one micro-batch and no scaler that is what the balancer's own
clip (`balancer.backward(..., clip=True)`, the old per-micro-batch protocol) wrote; these tests compute
that by hand on the same batch and compare.
"""

from __future__ import annotations

import copy

import pytest
import torch

import zoo
from tests.trainkit import TINY, tiny_config
from zoo.data import load_dataset
from zoo.train import Trainer

NO_DROPOUT = {**TINY, "class_dropout_prob": 0.0}  # label dropout would draw from the global RNG


def _batch(model: zoo.DiffusionModel, n: int = 10):
    images = load_dataset("digits").images[:n]
    y = torch.arange(n) % 10
    generator = torch.Generator().manual_seed(3)
    t = model.clusters.sample_timesteps(n, generator=generator)
    noise = torch.randn(images.shape, generator=generator)
    return images, y, t, noise


def _trainer(tmp_path, model: str, max_grad_norm: float | None, **changes) -> Trainer:
    overrides = dict(NO_DROPOUT)
    if max_grad_norm is not None:
        overrides["mtl_options"] = {"max_grad_norm": max_grad_norm}
    return Trainer(tiny_config(tmp_path, model=model, overrides=overrides, **changes))


def _grads(model: zoo.DiffusionModel) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


CASES = {  # name: (model, balancer max_grad_norm, TrainConfig.grad_clip)
    "nash recipe 1.0": ("dit_t_nash_k5", None, 0.0),  # Nash-MTL's recipe default max_grad_norm=1.0
    "nash tiny": ("dit_t_nash_k5", 1e-3, 0.0),
    "uw tiny": ("dit_t_dtr_uw_k5", 1e-3, 0.0),  # the clip covers UW's log-variances too
}


@pytest.mark.parametrize("case", list(CASES))
def test_trainer_step_clips_once_as_the_balancer_did(tmp_path, case):
    model_name, max_grad_norm, grad_clip = CASES[case]
    trainer = _trainer(tmp_path, model_name, max_grad_norm, grad_clip=grad_clip)
    threshold = trainer.model.balancer.max_grad_norm
    assert threshold == (1.0 if max_grad_norm is None else max_grad_norm)
    reference = copy.deepcopy(trainer.model)
    x0, y, t, noise = _batch(trainer.model)

    logs = trainer.train_step(x0, y, t=t, noise=noise)
    got = _grads(trainer.model)

    # the old semantics by hand: the balancer's own clip on the same batch (hidden capture protocol)
    out = reference.loss(x0, y, t=t, noise=noise)
    params = [p for p in reference.net.parameters() if p.requires_grad]
    old_logs = reference.balancer.backward(out.cluster_losses, params)
    expected = _grads(reference)

    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)
    before = float(old_logs["grad_norm_before_clip"])
    assert before > threshold  # the clip binds: the comparison is not vacuous
    assert logs["grad_norm_before_clip"] == pytest.approx(before, rel=1e-5)
    assert logs["grad_norm"] == pytest.approx(before, rel=1e-5)
    assert logs["grad_clip"] == threshold
    clipped = torch.linalg.vector_norm(torch.stack([g.norm() for g in got.values()]))
    assert float(clipped) == pytest.approx(threshold, rel=1e-4)


def test_the_tighter_threshold_wins_and_clips_once(tmp_path):
    """grad_clip tighter than the recipe's max_grad_norm: one clip at grad_clip (the old two clips'
    result: the balancer's clip then the trainer's, both scale the same direction)."""
    trainer = _trainer(tmp_path, "dit_t_nash_k5", 1.0, grad_clip=1e-4)
    assert trainer.clip_threshold() == 1e-4
    reference = copy.deepcopy(trainer.model)
    x0, y, t, noise = _batch(trainer.model)
    logs = trainer.train_step(x0, y, t=t, noise=noise)
    out = reference.loss(x0, y, t=t, noise=noise)
    reference.balancer.backward(
        out.cluster_losses, [p for p in reference.net.parameters() if p.requires_grad]
    )
    torch.nn.utils.clip_grad_norm_(list(reference.net.parameters()), 1e-4)  # the old trainer clip
    expected = _grads(reference)
    got = _grads(trainer.model)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-9, msg=name)
    assert logs["grad_clip"] == 1e-4


def test_grad_accumulation_clips_the_mean_gradient_once(tmp_path):
    trainer = _trainer(tmp_path, "dit_t_nash_k5", 1e-3, grad_accum=2)
    reference = copy.deepcopy(trainer.model)
    x0, y, t, noise = _batch(trainer.model)
    logs = trainer.train_step(x0, y, t=t, noise=noise)
    for part in (slice(0, 5), slice(5, 10)):
        out = reference.loss(x0[part], y[part], t=t[part], noise=noise[part])
        reference.backward(out, clip=False)
    for p in reference.parameters():
        if p.grad is not None:
            p.grad.div_(2)
    norm = reference.clip_grad_norm_(1e-3)
    assert float(norm) > 1e-3
    assert logs["grad_norm_before_clip"] == pytest.approx(float(norm), rel=1e-5)
    expected, got = _grads(reference), _grads(trainer.model)
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-9, msg=name)


def test_loss_output_carries_its_capture_so_two_forwards_can_be_in_flight():
    torch.manual_seed(0)
    model = zoo.create("dit_t_nash_k5", input_size=8, in_channels=1, num_classes=10, **NO_DROPOUT)
    twin = copy.deepcopy(model)
    x0, y, t, noise = _batch(model)
    first = model.loss(x0[:5], y[:5], t=t[:5], noise=noise[:5])
    model.loss(x0[5:], y[5:], t=t[5:], noise=noise[5:])  # opens another capture: the hidden one moves on
    assert first.capture is not None and first.params
    model.backward(first)
    alone = twin.loss(x0[:5], y[:5], t=t[:5], noise=noise[:5])
    twin.backward(alone)
    expected, got = _grads(twin), _grads(model)
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)
    assert torch.equal(model.balancer.weights, twin.balancer.weights)


def test_after_step_reevaluates_the_batch_for_famo():
    torch.manual_seed(0)
    model = zoo.create("dit_t_famo_k5", input_size=8, in_channels=1, num_classes=10, **NO_DROPOUT)
    reference = copy.deepcopy(model)
    x0, y, t, noise = _batch(model)
    for m in (model, reference):
        out = m.loss(x0, y, t=t, noise=noise)
        m.backward(out)
        torch.optim.SGD(m.net.parameters(), lr=0.5).step()
        if m is model:
            logs = model.after_step(out)
    with torch.no_grad():
        again = reference.loss(x0, y, t=t, noise=noise).cluster_losses
    expected = reference.balancer.after_step(again)
    torch.testing.assert_close(logs["delta"], expected["delta"])
    torch.testing.assert_close(model.balancer.logits, reference.balancer.logits)
    assert not torch.equal(model.balancer.logits, torch.zeros_like(model.balancer.logits))
    plain = zoo.create("dit_t_k5", input_size=8, in_channels=1, num_classes=10, **NO_DROPOUT)
    assert plain.after_step(plain.loss(x0, y, t=t, noise=noise)) == {}


def test_loss_checks_given_timesteps_at_the_boundary():
    torch.manual_seed(0)
    model = zoo.create("dit_t_dtr_uw_k5", input_size=8, in_channels=1, num_classes=10, **NO_DROPOUT)
    x0, y, t, noise = _batch(model)
    bad = t.clone()
    bad[3] = model.diffusion.num_timesteps
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 1000\), got values in \[\d+, 1000\]"):
        model.loss(x0, y, t=bad, noise=noise)
    with pytest.raises(TypeError, match="integer"):
        model.loss(x0, y, t=t.float(), noise=noise)
    # the same timesteps reach the backbone and its router unchecked, and still route as they would checked
    out = model.loss(x0, y, t=t, noise=noise)
    again = model.diffusion.training_losses(model.net, x0, t, y, noise=noise)
    torch.testing.assert_close(out.mse, again["mse"])
