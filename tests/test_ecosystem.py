"""The habits users bring from timm, huggingface_hub and torch: forward, is_model, pretrained_cfg,
checkpoint_path, a file overlay, stem / label-table adaptation, from_pretrained with the whole state,
deferred initialisation on the meta device, and the decoder NLL of the released ADM / DiT code."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from safetensors.torch import save_file

import zoo
from tests.test_hub_push import hub, online  # noqa: F401  (fixtures: a loopback fake Hub)
from tests.test_train import tiny_config
from zoo import routing
from zoo.diffusion import GaussianDiffusion, approx_standard_normal_cdf, discretized_gaussian_log_likelihood
from zoo.hub import CorruptWeightsError, adapt_input_conv
from zoo.train import Trainer

DIGITS = {"input_size": 8, "in_channels": 1, "num_classes": 10}
pytestmark = pytest.mark.usefixtures("one_thread")


def digits(name: str) -> dict:
    """The digits shape: DiT backbones default to ImageNet latents, adm_t is 8x8x1 with 10 classes."""
    return {} if name.startswith("adm") else DIGITS


def tiny(name: str = "dit_t", seed: int = 0, **overrides):
    """A tiny model whose every weight is random (its zero-initialised layers too), pos_embed kept."""
    torch.manual_seed(seed)
    model = zoo.create(name, **{**digits(name), **overrides})
    with torch.no_grad():
        for key, param in model.net.named_parameters():
            if key != "pos_embed":
                param.normal_(0.0, 0.1)
    return model.eval()


def batch(channels: int = 1, size: int = 8, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, channels, size, size, generator=generator)
    return x, torch.tensor([0, 412, 999]), torch.tensor([2, 9, 10])  # 10 is the null class


def caught_messages(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in caught]


# ---------------------------------------------------------------------------------- forward, is_model


@torch.no_grad()
def test_model_call_is_the_nets_forward():
    model = tiny("dit_t_dtr_uw_k5")
    x, t, y = batch()
    out = model(x, t, y)
    assert out.shape == (3, 2, 8, 8) and out.abs().max() > 0.1
    assert torch.equal(out, model.net(x, t, y))
    # the routing is part of it: the same weights without routing give another output
    plain = zoo.create("dit_t", **DIGITS).eval()
    plain.net.load_state_dict(model.net.state_dict())
    assert (plain(x, t, y) - out).abs().max() > 1e-3


def test_is_model_follows_timm():
    for name in ("dit_t", "dit_xl_dtr_nash_k5", "dit_l_uw_k5_snr", "dit_xl.in1k_256", "adm_64.in1k"):
        assert zoo.is_model(name), name
    assert zoo.is_model("dit_xl.some_tag")  # timm: is_model checks the architecture, not the tag
    for name in ("resnet50", "dit_q", "dit_t_foo", "", "dit_t_k0"):
        assert not zoo.is_model(name), name


# ---------------------------------------------------------------------------------- pretrained_cfg


def test_pretrained_cfg_of_a_tagged_model_is_timm_like():
    with torch.device("meta"):  # DiT-XL without its memory
        model = zoo.create("dit_xl.in1k_256")
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == "dit_xl" and cfg["tag"] == "in1k_256" and cfg["name"] == "dit_xl.in1k_256"
    assert cfg["hf_hub_id"] == "facebook/DiT-XL-2-256" and cfg["license"] == "cc-by-nc-4.0"
    assert cfg["input_size"] == (4, 32, 32) and cfg["num_classes"] == 1000
    assert cfg["first_conv"] == "x_embedder.proj" and cfg["classifier"] == "y_embedder.embedding_table"
    assert isinstance(cfg, dict) and cfg["url"].endswith("DiT-XL-2-256x256.pt")
    # timm: an untagged name carries its default tag's config; a name without weights an empty one
    with torch.device("meta"):
        assert zoo.create("dit_xl").pretrained_cfg["tag"] == "in1k_256"
    assert zoo.create("dit_t_pcgrad_k2", **DIGITS).pretrained_cfg == {}


def test_pretrained_cfg_describes_the_weights_not_the_adapted_model():
    model, _ = caught_messages(lambda: zoo.create("dit_t.digits", pretrained=True, num_classes=4))
    assert model.pretrained_cfg["num_classes"] == 10 and model.num_classes == 4
    assert model.pretrained_cfg["input_size"] == (1, 8, 8)
    assert model.pretrained_cfg["sha256"] == zoo.get_pretrained_cfg("dit_t.digits").sha256


# ---------------------------------------------------------------------------------- checkpoint_path


@pytest.mark.parametrize("layout", ["pt", "train.py", "safetensors", "folder", "whole model .pt"])
def test_checkpoint_path_loads_after_building(tmp_path, layout):
    source = tiny("dit_t_uw_k5")
    with torch.no_grad():
        source.balancer.log_vars.copy_(torch.tensor([0.5, -1.0, 2.0, 0.25, -0.75]))
    net = source.net.state_dict()
    if layout == "pt":
        torch.save(net, path := tmp_path / "w.pt")
    elif layout == "train.py":
        torch.save(
            {"model": {k: torch.zeros_like(v) for k, v in net.items()}, "ema": net}, path := tmp_path / "c.pt"
        )
    elif layout == "safetensors":
        save_file({k: v.contiguous() for k, v in net.items()}, str(path := tmp_path / "w.safetensors"))
    elif layout == "folder":
        path = source.save_pretrained(tmp_path / "folder")
    else:
        torch.save(source.state_dict(), path := tmp_path / "whole.pt")
    model = zoo.create("dit_t_uw_k5", **DIGITS, checkpoint_path=path).eval()
    x, t, y = batch()
    torch.testing.assert_close(model(x, t, y), source(x, t, y), atol=0, rtol=0)
    restored = model.balancer.log_vars
    if layout in ("folder", "whole model .pt"):  # the whole state came along
        torch.testing.assert_close(restored, source.balancer.log_vars)
    else:
        assert torch.equal(restored, torch.zeros(5))


def test_checkpoint_path_is_strict_and_checked_first(tmp_path):
    torch.save(tiny("dit_t", num_classes=3).net.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"x_embedder\.proj\.weight has shape"):
        zoo.create("dit_t", input_size=8, in_channels=2, num_classes=3, checkpoint_path=tmp_path / "w.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint_path"):
        zoo.create("dit_t", **DIGITS, checkpoint_path=tmp_path / "missing.pt")


# ---------------------------------------------------------------------------------- file overlay


def test_file_overlay_for_a_registered_tag(tmp_path):
    other = tiny("dit_t")
    path = tmp_path / "mirror.safetensors"
    save_file({k: v.contiguous() for k, v in other.net.state_dict().items()}, str(path))
    # the registered sha256 still guards the file: another file is refused, never loaded
    with pytest.raises(CorruptWeightsError, match="does not match"):
        zoo.create("dit_t.digits", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    model = zoo.create(
        "dit_t.digits", pretrained=True, pretrained_cfg_overlay=dict(file=str(path), sha256=None)
    )
    x, t, y = batch()
    torch.testing.assert_close(model.eval()(x, t, y), other(x, t, y), atol=0, rtol=0)
    assert model.pretrained_cfg["file"] == str(path.resolve()) and model.pretrained_cfg["sha256"] is None
    shipped = zoo.create("dit_t.digits", pretrained=True).eval()
    assert (shipped(x, t, y) - model(x, t, y)).abs().max() > 1e-3
    with pytest.raises(TypeError, match=r"unknown field\(s\) \['weights'\]"):
        zoo.create("dit_t.digits", pretrained=True, pretrained_cfg_overlay=dict(weights="x"))
    with pytest.raises(FileNotFoundError, match="overlay file"):
        zoo.create("dit_t.digits", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "nope")))


# ---------------------------------------------------------------------------------- adaptation


@pytest.mark.parametrize("in_chans", [1, 2, 3, 7, 8])
def test_adapt_input_conv_is_timms(in_chans):
    timm_adapt = pytest.importorskip("timm.models").adapt_input_conv
    weight = torch.randn(16, 4, 2, 2)
    ours = adapt_input_conv(in_chans, weight, base_chans=4)
    assert ours.shape == (16, in_chans, 2, 2)
    torch.testing.assert_close(ours, timm_adapt(in_chans, weight.clone(), base_chans=4), atol=0, rtol=0)
    # hand check: 1 channel sums, more repeat cyclically and scale by base/in
    expected = (
        weight.sum(1, keepdim=True)
        if in_chans == 1
        else torch.stack([weight[:, c % 4] for c in range(in_chans)], 1) * 4 / in_chans
    )
    torch.testing.assert_close(ours, expected)


@torch.no_grad()
def test_other_in_channels_adapt_the_stem_with_a_warning(tmp_path):
    source = tiny("dit_t", in_channels=4)
    folder = source.save_pretrained(tmp_path / "four")
    model, messages = caught_messages(
        lambda: zoo.create("dit_t", pretrained=f"local-dir:{folder}", in_channels=8)
    )
    assert any("adapted the stem x_embedder.proj from 4 to 8" in m for m in messages), messages
    # repeated x 2 and halved: the stem sees [x, x] exactly as the source saw x
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(model.net.x_embedder(torch.cat([x, x], 1)), source.net.x_embedder(x))
    # the output layer is as wide as the channels: it starts from this model's (zero) initialisation
    assert torch.equal(model.net.final_layer.linear.weight, torch.zeros(2 * 2 * 16, 128))
    torch.testing.assert_close(model.net.blocks[1].attn.qkv.weight, source.net.blocks[1].attn.qkv.weight)
    one, _ = caught_messages(lambda: zoo.create("dit_t", pretrained=f"local-dir:{folder}", in_channels=1))
    torch.testing.assert_close(one.net.x_embedder.proj.weight, source.net.x_embedder.proj.weight.sum(1, True))


@torch.no_grad()
def test_adm_stem_adapts_too(tmp_path):
    source = tiny("adm_t")
    model, messages = caught_messages(
        lambda: zoo.create("adm_t", pretrained=source.net.state_dict(), in_channels=3)
    )
    assert any("adapted the stem input_blocks.0.0 from 1 to 3" in m for m in messages)
    torch.testing.assert_close(
        model.net.input_blocks[0][0].weight, source.net.input_blocks[0][0].weight.repeat(1, 3, 1, 1) / 3
    )


@torch.no_grad()
@pytest.mark.parametrize("num_classes", [3, 10, 14])
def test_other_num_classes_adapt_the_label_table_keeping_the_null_row(tmp_path, num_classes):
    source = tiny("dit_t")
    old = source.net.y_embedder.embedding_table.weight  # (11, 128): 10 classes, null row 10
    folder = source.save_pretrained(tmp_path / "ten")
    model, messages = caught_messages(
        lambda: zoo.create("dit_t_dtr", pretrained=f"local-dir:{folder}", num_classes=num_classes)
    )
    new = model.net.y_embedder.embedding_table.weight
    assert new.shape == (num_classes + 1, 128)
    kept = min(10, num_classes)
    torch.testing.assert_close(new[:kept], old[:kept], atol=0, rtol=0)
    torch.testing.assert_close(new[num_classes], old[10], atol=0, rtol=0)  # null stays null: guidance intact
    if num_classes > 10:  # new classes from initialisation (std 0.02), not copies of the source
        fresh = new[10:num_classes]
        assert 0.005 < fresh.std() < 0.05 and not torch.isclose(fresh, old[10]).all()
    label_warnings = [m for m in messages if "label table" in m]
    assert bool(label_warnings) == (num_classes != 10)
    if num_classes != 10:
        assert (
            f"num_classes 10 -> {num_classes}" in label_warnings[0]
            and "null (guidance) row kept" in label_warnings[0]
        )
    x, t, _ = batch()
    y = torch.tensor([0, 1, num_classes])
    unrouted = zoo.create(
        "dit_t", pretrained=model.net.state_dict(), **{**DIGITS, "num_classes": num_classes}
    )
    torch.testing.assert_close(unrouted.eval().net(x, t, y), source.net(x, t, torch.tensor([0, 1, 10])))


# ---------------------------------------------------------------------------------- whole state on the Hub


STATEFUL = [
    "dit_t_uw_k3",
    "dit_t_famo_k3",
    "dit_t_nash_k3",
    "dit_t_imtl_k3",
    "dit_t_pcgrad_k3",
    "dit_t_uwc_k3",
]


def scramble_mtl_state(model) -> None:
    """Give every tensor outside the net a distinctive value (as after some training)."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for value in model.mtl_state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.randn(value.shape, generator=generator, dtype=value.dtype))
            else:
                value.fill_(123)


def assert_same_state(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("name", STATEFUL)
def test_from_pretrained_keeps_the_whole_state(tmp_path, name):
    model = tiny(name)
    scramble_mtl_state(model)
    assert model.mtl_state_dict(), f"{name} should hold state outside the net"
    folder = model.save_pretrained(tmp_path / "saved")
    assert (folder / "mtl.safetensors").is_file()
    for spec in (folder, f"local-dir:{folder}"):
        again = zoo.DiffusionModel.from_pretrained(spec)
        assert_same_state(again, model)
    assert_same_state(zoo.create(f"local-dir:{folder}"), model)


def test_a_stateless_balancer_writes_no_mtl_file_and_a_mismatched_one_is_refused(tmp_path):
    folder = tiny("dit_t").save_pretrained(tmp_path / "plain")
    assert not (folder / "mtl.safetensors").exists()
    model = tiny("dit_t_uw_k3")
    with pytest.raises(ValueError, match=r"missing \['balancer.log_vars'\]"):
        model.load_mtl_state_dict({})
    with pytest.raises(ValueError, match="has shape"):
        model.load_mtl_state_dict({"balancer.log_vars": torch.zeros(4)})


def test_push_and_from_pretrained_through_the_hub(hub, tmp_path):  # noqa: F811
    model = tiny("dit_t_famo_k3")
    scramble_mtl_state(model)
    model.push_to_hub("someone/famo-digits")
    pulled = zoo.DiffusionModel.from_pretrained("someone/famo-digits")
    assert_same_state(pulled, model)
    assert_same_state(zoo.create("hf-hub:someone/famo-digits"), model)
    # a repo without balancer state (an older upload) still loads
    plain = tiny("dit_t")
    plain.push_to_hub("someone/plain")
    assert_same_state(zoo.DiffusionModel.from_pretrained("hf-hub:someone/plain"), plain)


# ---------------------------------------------------------------------------------- deferred initialisation


def test_meta_device_builds_dit_xl_without_memory():

    with torch.device("meta"):
        model = zoo.create("dit_xl_dtr_nash_k5")
    assert all(p.is_meta for p in model.net.parameters())
    assert model.num_parameters() == 675_129_632
    # the exact small parts are real: routing table, balancer state, diffusion tables
    mask = model.net.router.mask(torch.tensor([0, 999]), block=3)
    expected = routing.dtr_table(1152, num_tasks=1000, beta=0.8, alpha=4.0)[[0, 999]]
    torch.testing.assert_close(mask.float(), expected)
    assert torch.equal(model.balancer.weights, torch.full((5,), 0.2, dtype=torch.float64))
    assert model.diffusion.betas.device.type == "cpu" and model.clusters.k == 5


@pytest.mark.parametrize(
    "name", ["dit_t_dtr_famo_k3", "dit_t_rand_uw_k2", "adm_t_dtr_nash_k2", "dit_t_uwc_k2"]
)
def test_meta_then_materialize_initialises_or_loads(name):
    torch.manual_seed(0)
    reference = tiny(name)
    scramble_mtl_state(reference)
    with torch.device("meta"):
        deferred = zoo.create(name, **digits(name))
    assert next(deferred.net.parameters()).is_meta
    # load: the whole state, routing intact
    loaded = deferred.materialize("cpu", state_dict=reference.state_dict()).eval()
    assert_same_state(loaded, reference)
    x, t, y = batch()
    torch.testing.assert_close(loaded(x, t, y), reference(x, t, y), atol=0, rtol=0)
    # init: the net's own initialisation (DiT: sin-cos positions, zero adaLN / output), routing exact
    with torch.device("meta"):
        fresh = zoo.create(name, **digits(name))
    fresh.materialize("cpu").eval()
    built = zoo.create(name, **digits(name)).eval()
    assert all(not p.is_meta and torch.isfinite(p).all() for p in fresh.parameters())
    if name.startswith("dit"):
        assert torch.equal(fresh.net.pos_embed, built.net.pos_embed)
        assert torch.equal(
            fresh.net.final_layer.linear.weight, torch.zeros_like(built.net.final_layer.linear.weight)
        )
        if built.net.router is not None:
            assert torch.equal(fresh.net.router.mask(t, block=1), built.net.router.mask(t, block=1))
        assert torch.equal(fresh(x, t, y), torch.zeros_like(built(x, t, y)))  # adaLN-Zero: zero at init
    assert_same_state_of_parts(fresh, built)


def assert_same_state_of_parts(a, b) -> None:
    sa, sb = a.mtl_state_dict(), b.mtl_state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:  # FAMO's pending losses start as NaN
        torch.testing.assert_close(sa[key], sb[key], atol=0, rtol=0, equal_nan=True, msg=key)


# ---------------------------------------------------------------------------------- the decoder NLL


def adm_log_likelihood_float64(x: float, mean: float, log_scale: float) -> float:
    """ADM's discretized_gaussian_log_likelihood in plain float64 Python, from its formula."""

    def approx_cdf(z: float) -> float:
        return 0.5 * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))

    inv_std = math.exp(-log_scale)
    cdf_plus = approx_cdf(inv_std * (x - mean + 1 / 255))
    cdf_min = approx_cdf(inv_std * (x - mean - 1 / 255))
    if x < -0.999:
        return math.log(max(cdf_plus, 1e-12))
    if x > 0.999:
        return math.log(max(1.0 - cdf_min, 1e-12))
    return math.log(max(cdf_plus - cdf_min, 1e-12))


def nll_inputs():
    generator = torch.Generator().manual_seed(3)
    x = (torch.randint(0, 256, (400,), generator=generator) / 127.5 - 1).double()
    x[:50], x[50:100] = -1.0, 1.0  # both edge bins
    mean = (x + 0.05 * torch.randn(400, generator=generator, dtype=torch.float64)).clamp(-1.2, 1.2)
    log_scale = torch.empty(400, dtype=torch.float64).uniform_(-6.0, -2.0, generator=generator)
    return x, mean, log_scale


def test_adm_decoder_nll_is_the_released_tanh_formula():
    x, mean, log_scale = nll_inputs()
    ours = discretized_gaussian_log_likelihood(x, mean, log_scale, normal_cdf="adm")
    expected = torch.tensor(
        [adm_log_likelihood_float64(*v) for v in zip(x.tolist(), mean.tolist(), log_scale.tolist())]
    )
    # float64 either way; ADM's Phi(u) - Phi(l) cancels where both are near 1, so the last digits move
    torch.testing.assert_close(ours, expected.double(), rtol=1e-6, atol=1e-9)
    exact = discretized_gaussian_log_likelihood(x, mean, log_scale, normal_cdf="exact")
    assert (ours - exact).abs().max() > 1e-3  # ... far below the difference between the two CDFs
    z = torch.linspace(-4, 4, 81, dtype=torch.float64)
    assert (approx_standard_normal_cdf(z) - torch.special.ndtr(z)).abs().max() < 2e-4


def test_exact_decoder_nll_uses_the_normal_cdf():
    from scipy.stats import norm

    x, mean, log_scale = nll_inputs()
    ours = discretized_gaussian_log_likelihood(x, mean, log_scale, normal_cdf="exact")
    std = log_scale.exp().numpy()
    upper, lower = (x - mean + 1 / 255).numpy() / std, (x - mean - 1 / 255).numpy() / std
    mass = torch.where(  # on the tail where the difference does not cancel
        torch.tensor(lower) > 0,
        torch.tensor(norm.sf(lower) - norm.sf(upper)),
        torch.tensor(norm.cdf(upper) - norm.cdf(lower)),
    )
    mid = mass.clamp(min=1e-12).log()
    expected = torch.where(
        x < -0.999,
        torch.tensor(norm.logcdf(upper)),
        torch.where(x > 0.999, torch.tensor(norm.logsf(lower)), mid),
    )
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)
    adm = discretized_gaussian_log_likelihood(x, mean, log_scale, normal_cdf="adm")
    assert (adm - ours).abs().max() > 1e-4  # the two are different functions
    with pytest.raises(ValueError, match="normal_cdf"):
        discretized_gaussian_log_likelihood(x, mean, log_scale, normal_cdf="erf")


def test_recipes_default_to_the_adm_cdf_and_keep_exact_as_an_option():
    model = zoo.create("dit_t_uw_k3", **DIGITS)
    assert model.config["diffusion"]["normal_cdf"] == "adm" and model.diffusion.normal_cdf == "adm"
    exact = zoo.create("dit_t_uw_k3", **DIGITS, normal_cdf="exact")
    assert exact.diffusion.normal_cdf == "exact"
    assert GaussianDiffusion().normal_cdf == "exact"  # the bare process keeps the exact CDF
    assert model.diffusion.respace("50").normal_cdf == "adm"
    assert GaussianDiffusion(**model.diffusion.to_dict()).normal_cdf == "adm"
    # configs written before the option (the shipped models) keep the exact CDF they were trained with
    legacy = {
        **model.config,
        "diffusion": {k: v for k, v in model.config["diffusion"].items() if k != "normal_cdf"},
    }
    assert zoo.DiffusionModel(legacy).diffusion.normal_cdf == "exact"
    # at t = 0 the training loss is the decoder NLL (bits/dim) with the chosen CDF
    generator = torch.Generator().manual_seed(0)
    x0 = (torch.randint(0, 256, (4, 1, 8, 8), generator=generator) / 127.5 - 1).double()
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    eps = noise + 0.1 * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    value = torch.rand(x0.shape, generator=generator, dtype=torch.float64) * 2 - 1
    output = torch.cat([eps, value], dim=1)
    t = torch.zeros(4, dtype=torch.long)
    losses = {}
    for process in (model.diffusion, exact.diffusion):
        vb = process.training_losses(lambda x, t, y: output, x0, t, noise=noise)["vb"]
        reverse = process.p_mean_variance(lambda x, t, y: output, process.q_sample(x0, t, noise), t)
        log_lik = discretized_gaussian_log_likelihood(
            x0, reverse["mean"], 0.5 * reverse["log_variance"], normal_cdf=process.normal_cdf
        )
        torch.testing.assert_close(vb, -log_lik.mean(dim=(1, 2, 3)) / math.log(2.0), rtol=1e-12, atol=1e-12)
        losses[process.normal_cdf] = vb
    relative = ((losses["adm"] - losses["exact"]) / losses["exact"]).abs().max()
    assert 1e-5 < relative < 0.05, relative  # a fraction of a percent


def test_a_trained_run_publishes_its_trained_balancer_state(tmp_path):

    trainer = Trainer(tiny_config(tmp_path, model="dit_t_uw_k5", steps=3))
    trainer.fit()
    trained = trainer.model.balancer.log_vars.detach()
    assert not torch.equal(trained, torch.zeros(5))
    published = zoo.DiffusionModel.from_pretrained(tmp_path / "run" / "final")
    torch.testing.assert_close(published.balancer.log_vars, trained, atol=0, rtol=0)
    for key, value in published.net.state_dict().items():  # the EMA weights, as before
        assert torch.equal(value, trainer.ema.state_dict()[key]), key
