"""models.dit: sizes against the DiT paper, key names, the masked block, backends, inputs."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from zoo.models import DIT_SIZES, PATCH_SIZES, DiT, DiTBlock, count_params, dit_config, gflops
from zoo.models.dit import sincos_pos_embed_2d, timestep_embedding

TINY = {"input_size": 8, "patch_size": 2, "in_channels": 4, "hidden_size": 32, "depth": 2, "num_heads": 4}

# The DiT paper (Peebles & Xie 2023), Tables 1 and 4: parameters (millions) and forward GFLOPs at 32x32x4.
PAPER_PARAMS_M = {"S": 33.0, "B": 130.5, "L": 458.1, "XL": 675.1}
# GFLOPs as printed (strings keep the printed precision; the check allows one unit of the last digit).
PAPER_GFLOPS = {
    ("S", 2): "6.06", ("S", 4): "1.41",
    ("B", 2): "23.01", ("B", 4): "5.56", ("B", 8): "1.42",
    ("L", 2): "80.7", ("L", 4): "19.7",
    ("XL", 2): "118.6", ("XL", 4): "29.05",
}  # fmt: skip


def perturb(net: nn.Module, std: float = 0.1, seed: int = 0) -> nn.Module:
    """Replace the zero-initialised layers by random values so that every path carries signal."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name != "pos_embed":
                param.add_(torch.randn(param.shape, generator=generator) * std)
    return net


def tiny(**overrides) -> DiT:
    torch.manual_seed(0)
    return perturb(DiT(**{**TINY, **overrides})).eval()


def inputs(batch: int = 3, num_classes: int = 1000, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator)
    y = torch.randint(0, num_classes, (batch,), generator=generator)
    return x, t, y


class TableRouter(nn.Module):
    """A test-local router: one 0/1 row per timestep and block, kept as a non-persistent buffer."""

    def __init__(self, channels: int, num_blocks: int, num_tasks: int, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.channels, self.num_blocks, self.num_tasks = channels, num_blocks, num_tasks
        table = (torch.rand(num_blocks, num_tasks, channels, generator=generator) < 0.6).float()
        self.register_buffer("table", table, persistent=False)

    def mask(self, t: torch.Tensor, block: int = 0) -> torch.Tensor:
        return self.table[block, t]


# ------------------------------------------------------------------------------------------ sizes


def closed_form_params(
    hidden: int, depth: int, patch: int, grid: int = 16, in_ch: int = 4, classes: int = 1000
):
    out_ch = 2 * in_ch
    embed = hidden * in_ch * patch**2 + hidden + 256 * hidden + hidden + hidden**2 + hidden
    labels, positions = (classes + 1) * hidden, grid**2 * hidden
    block = (3 * hidden**2 + 3 * hidden) + (hidden**2 + hidden) + 2 * (4 * hidden**2) + 5 * hidden
    block += 6 * hidden**2 + 6 * hidden
    final = 2 * hidden**2 + 2 * hidden + hidden * patch**2 * out_ch + patch**2 * out_ch
    return embed + labels + positions + depth * block + final


def closed_form_macs(hidden: int, depth: int, patch: int, latent: int = 32, in_ch: int = 4):
    tokens = (latent // patch) ** 2
    macs = tokens * hidden * in_ch * patch**2 + 256 * hidden + hidden**2  # patchify, timestep MLP
    per_block = tokens * 12 * hidden**2 + 2 * tokens**2 * hidden + 6 * hidden**2  # qkv+proj+mlp, attn, adaLN
    macs += depth * per_block + 2 * hidden**2 + tokens * hidden * patch**2 * 2 * in_ch  # final layer
    return macs


@pytest.mark.parametrize("size", list(DIT_SIZES))
@pytest.mark.parametrize("patch", PATCH_SIZES)
def test_params_and_gflops_match_closed_form(size, patch):
    config = dit_config(size, patch)
    with torch.device("meta"):
        net = DiT(**config)
    hidden, depth = config["hidden_size"], config["depth"]
    assert count_params(net) == closed_form_params(hidden, depth, patch, grid=32 // patch)
    assert gflops(net) == pytest.approx(closed_form_macs(hidden, depth, patch) / 1e9, rel=1e-12)


@pytest.mark.parametrize("size", list(PAPER_PARAMS_M))
def test_params_match_paper(size):
    with torch.device("meta"):
        net = DiT(**dit_config(size, 2))
    assert round(count_params(net) / 1e6, 1) == PAPER_PARAMS_M[size]


@pytest.mark.parametrize(("size", "patch"), list(PAPER_GFLOPS))
def test_gflops_match_paper(size, patch):
    printed = PAPER_GFLOPS[(size, patch)]
    last_digit = 10.0 ** -len(printed.split(".")[1])
    assert gflops(dit_config(size, patch)) == pytest.approx(float(printed), abs=last_digit)


def test_dit_config_rejects_unknown_size_and_patch():
    with pytest.raises(ValueError, match=r"expected one of \['T', 'S', 'B', 'L', 'XL'\]"):
        dit_config("M")
    with pytest.raises(ValueError, match=r"expected one of \[2, 4, 8\]"):
        dit_config("S", 3)


# ------------------------------------------------------------------------------- layout and init


def test_state_dict_keys_are_the_original_dits():
    net = DiT(**TINY, num_classes=10)
    expected = {
        "pos_embed", "x_embedder.proj.weight", "x_embedder.proj.bias",
        "t_embedder.mlp.0.weight", "t_embedder.mlp.0.bias", "t_embedder.mlp.2.weight", "t_embedder.mlp.2.bias",
        "y_embedder.embedding_table.weight",
        "final_layer.linear.weight", "final_layer.linear.bias",
        "final_layer.adaLN_modulation.1.weight", "final_layer.adaLN_modulation.1.bias",
    }  # fmt: skip
    for i in range(TINY["depth"]):
        for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1"):
            expected |= {f"blocks.{i}.{layer}.weight", f"blocks.{i}.{layer}.bias"}
    state = net.state_dict()
    assert set(state) == expected
    assert state["y_embedder.embedding_table.weight"].shape == (11, 32)  # + the null class
    assert state["pos_embed"].shape == (1, 16, 32) and not net.pos_embed.requires_grad
    assert state["blocks.0.attn.qkv.weight"].shape == (96, 32)
    assert state["final_layer.linear.weight"].shape == (2 * 2 * 8, 32)  # learn_sigma doubles channels


def test_pos_embed_is_mae_sincos_in_float64():
    dim, grid = 32, 4
    grid_w, grid_h = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))

    def one_d(positions):
        omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4))
        angles = np.outer(positions.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    expected = np.concatenate([one_d(grid_w), one_d(grid_h)], axis=1)
    np.testing.assert_allclose(sincos_pos_embed_2d(dim, grid).numpy(), expected, atol=1e-12)
    net = DiT(**TINY)
    np.testing.assert_allclose(net.pos_embed[0].double().numpy(), expected, atol=1e-6)


def test_timestep_embedding_formula():
    t = torch.tensor([0, 1, 17, 999])
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    args = t[:, None].double() * freqs
    expected = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    torch.testing.assert_close(timestep_embedding(t, 256).double(), expected, atol=2e-4, rtol=0)
    shifted = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / (half - 1))
    expected_shifted = torch.cat([torch.cos(t[:, None] * shifted), torch.sin(t[:, None] * shifted)], dim=1)
    torch.testing.assert_close(
        timestep_embedding(t, 256, freq_shift=1).double(), expected_shifted, atol=2e-4, rtol=0
    )


def test_fresh_model_outputs_zeros_and_init_is_the_originals():
    torch.manual_seed(0)
    net = DiT(**TINY, num_classes=10).eval()
    x, t, y = inputs(num_classes=10)
    out = net(x, t, y)
    assert out.shape == (3, 8, 8, 8) and torch.count_nonzero(out) == 0
    for block in net.blocks:
        assert torch.count_nonzero(block.adaLN_modulation[1].weight) == 0
        assert torch.count_nonzero(block.attn.qkv.bias) == 0
    bound = math.sqrt(6 / (32 + 96))  # xavier-uniform on qkv
    assert net.blocks[0].attn.qkv.weight.abs().max() <= bound
    assert net.y_embedder.embedding_table.weight.std().item() == pytest.approx(0.02, rel=0.2)


def test_learn_sigma_false_keeps_input_channels():
    net = tiny(learn_sigma=False)
    x, t, y = inputs()
    assert net.out_channels == 4 and net(x, t, y).shape == x.shape


# -------------------------------------------------------------------------------------- the block


def make_block(seed: int = 0) -> DiTBlock:
    torch.manual_seed(seed)
    return perturb(DiTBlock(32, 4), std=0.2, seed=seed)


def reference_block(block: DiTBlock, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Block(x) written out in float64 from the block's own weights: adaLN-Zero attention then MLP."""
    params = {name: p.detach().double() for name, p in block.named_parameters()}
    x, c = x.double(), c.double()
    mod = F.linear(F.silu(c), params["adaLN_modulation.1.weight"], params["adaLN_modulation.1.bias"])
    shift1, scale1, gate1, shift2, scale2, gate2 = mod[:, None].chunk(6, dim=-1)

    def norm(h):
        return (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-6)

    batch, tokens, dim = x.shape
    qkv = F.linear(norm(x) * (1 + scale1) + shift1, params["attn.qkv.weight"], params["attn.qkv.bias"])
    q, k, v = qkv.reshape(batch, tokens, 3, 4, dim // 4).unbind(2)
    weights = torch.softmax(torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(dim // 4), dim=-1)
    attn = torch.einsum("bhnm,bmhd->bnhd", weights, v).reshape(batch, tokens, dim)
    h = x + gate1 * F.linear(attn, params["attn.proj.weight"], params["attn.proj.bias"])
    hidden = F.linear(norm(h) * (1 + scale2) + shift2, params["mlp.fc1.weight"], params["mlp.fc1.bias"])
    mlp = F.linear(F.gelu(hidden, approximate="tanh"), params["mlp.fc2.weight"], params["mlp.fc2.bias"])
    return h + gate2 * mlp


def test_block_matches_float64_reference():
    block = make_block()
    x, c = torch.randn(2, 5, 32), torch.randn(2, 32)
    torch.testing.assert_close(block(x, c).double(), reference_block(block, x, c), atol=1e-5, rtol=1e-5)


def test_masked_block_is_x_plus_block_of_masked_input():
    block = make_block(seed=1)
    x, c = torch.randn(2, 5, 32), torch.randn(2, 32)
    mask = (torch.rand(2, 32) < 0.5).float()
    routed = x * mask[:, None]
    expected = x.double() + (reference_block(block, routed, c) - routed.double())
    torch.testing.assert_close(block(x, c, mask).double(), expected, atol=1e-5, rtol=1e-5)


def test_all_ones_mask_is_the_plain_block_and_zero_mask_keeps_the_skip():
    block = make_block(seed=2)
    x, c = torch.randn(2, 5, 32), torch.randn(2, 32)
    assert torch.equal(block(x, c, torch.ones(2, 32)), block(x, c))
    # With m = 0 the block sees zeros, so out - x must not depend on x at all.
    zeros = torch.zeros(2, 32)
    torch.testing.assert_close(block(x, c, zeros) - x, block(3 * x + 1, c, zeros) - (3 * x + 1))


def test_mask_is_per_sample():
    block = make_block(seed=3)
    x, c = torch.randn(2, 5, 32), torch.randn(2, 32)
    mask = torch.stack([torch.ones(32), (torch.arange(32) < 16).float()])
    out = block(x, c, mask)
    torch.testing.assert_close(out[:1], block(x[:1], c[:1]))
    torch.testing.assert_close(out[1:], block(x[1:], c[1:], mask[1:]))
    assert not torch.allclose(out[1:], block(x[1:], c[1:]))


# ------------------------------------------------------------------------------------ the network


def test_router_masks_each_block_and_leaves_state_dict_alone():
    net = tiny(num_classes=10)
    keys = set(net.state_dict())
    router = TableRouter(32, TINY["depth"], num_tasks=1000)
    x, t, y = inputs(num_classes=10)
    # Reference: run the same blocks by hand with the router's masks.
    with torch.no_grad():
        c = net.t_embedder(t) + net.y_embedder(y)
        tokens = net.x_embedder(x) + net.pos_embed
        for i, block in enumerate(net.blocks):
            tokens = block(tokens, c, router.mask(t, block=i))
        expected = net.unpatchify(net.final_layer(tokens, c))
        plain = net(x, t, y)
        net.set_router(router)
        routed = net(x, t, y)
    assert set(net.state_dict()) == keys and net.router is router
    torch.testing.assert_close(routed, expected)
    assert not torch.allclose(routed, plain)
    net.set_router(None)
    assert net.router is None and torch.equal(net(x, t, y), plain)


def test_router_validation():
    net = tiny()
    with pytest.raises(ValueError, match="must equal hidden_size=32"):
        net.set_router(TableRouter(16, TINY["depth"], 1000))
    with pytest.raises(ValueError, match="expected the depth 2"):
        net.set_router(TableRouter(32, 3, 1000))
    with pytest.raises(TypeError, match=r"mask\(t, block=i\)"):
        net.set_router(object())

    class ChannelFree:  # no `channels` attribute: the width is found by a trial call
        def mask(self, t, block=0):
            return torch.ones(t.shape[0], 24)

    with pytest.raises(ValueError, match="must equal hidden_size=32"):
        net.set_router(ChannelFree())


@pytest.mark.parametrize("backend", ["math", "xformers"])
def test_attention_backends_agree(backend):
    x, t, y = inputs()
    reference = tiny()(x, t, y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = tiny(attn_backend=backend)
        out = net(x, t, y)
        net(x, t, y)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    fallbacks = [w for w in caught if "falls back to 'sdpa'" in str(w.message)]
    assert len(fallbacks) <= (1 if backend == "xformers" else 0)


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown attn_backend 'flash'.*\['sdpa', 'math', 'xformers'\]"):
        DiT(**TINY, attn_backend="flash")


def test_grad_checkpointing_gives_identical_gradients():
    x, t, y = inputs()
    grads = []
    for flag in (False, True):
        net = tiny(grad_checkpointing=flag, class_dropout_prob=0.0).train()
        net.set_router(TableRouter(32, TINY["depth"], 1000))
        net(x, t, y).square().mean().backward()
        grads.append({name: p.grad for name, p in net.named_parameters() if p.requires_grad})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


def test_label_dropout_and_null_class():
    net = tiny(num_classes=10, class_dropout_prob=0.5)
    x, t, y = inputs(batch=4, num_classes=10)
    null = torch.full_like(y, 10)
    drop = torch.tensor([True, False, True, False])
    forced = net(x, t, y, force_drop_ids=drop)
    torch.testing.assert_close(forced, net(x, t, torch.where(drop, null, y)))
    torch.testing.assert_close(net(x, t), net(x, t, null))  # y=None means the null class
    assert torch.equal(net(x, t, y), net(x, t, y))  # no dropout in eval mode
    embedder = net.y_embedder.train()
    torch.manual_seed(0)
    labels = torch.randint(0, 10, (4000,))
    dropped = (embedder(labels) == embedder.embedding_table.weight[10]).all(dim=1).float().mean().item()
    assert 0.45 < dropped < 0.55  # Binomial(4000, 0.5): 6 standard deviations


def test_unconditional_model():
    net = tiny(num_classes=0)
    assert net.y_embedder is None and not any(k.startswith("y_embedder") for k in net.state_dict())
    x, t, y = inputs()
    assert net(x, t).shape == (3, 8, 8, 8)
    with pytest.raises(ValueError, match="unconditional.*y and force_drop_ids must be None"):
        net(x, t, y)
    with pytest.raises(ValueError, match="unconditional.*y and force_drop_ids must be None"):
        net(x, t, force_drop_ids=torch.ones(3, dtype=torch.bool))


def test_bad_inputs_raise_naming_the_expected_value():
    net = tiny(num_classes=10)
    x, t, y = inputs(num_classes=10)
    with pytest.raises(ValueError, match=r"\(B, 4, 8, 8\), got \(3, 4, 16, 16\)"):
        net(torch.randn(3, 4, 16, 16), t, y)
    with pytest.raises(ValueError, match=r"\(B, 4, 8, 8\), got \(3, 3, 8, 8\)"):
        net(torch.randn(3, 3, 8, 8), t, y)
    with pytest.raises(ValueError, match=r"t must have shape \(3,\)"):
        net(x, t[:1], y)
    with pytest.raises(ValueError, match=r"t must have shape \(3,\)"):
        net(x, t[:, None], y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\] \(10 = null class\)"):
        net(x, t, torch.tensor([0, 11, 2]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\]"):
        net(x, t, torch.tensor([0, -1, 2]))
    with pytest.raises(ValueError, match=r"y must be an integer tensor of shape \(3,\)"):
        net(x, t, y.float())
    strict = tiny(num_classes=10, class_dropout_prob=0.0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\], got"):
        strict(x, t, torch.tensor([0, 10, 2]))
    with pytest.raises(ValueError, match="y is required"):
        strict(x, t)
    with pytest.raises(ValueError, match="force_drop_ids needs a null class"):
        strict(x, t, y, force_drop_ids=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"force_drop_ids must have shape \(3,\)"):
        net(x, t, y, force_drop_ids=torch.ones(2, dtype=torch.bool))
    net.set_router(TableRouter(32, TINY["depth"], num_tasks=1000))
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 999\]"):
        net(x, torch.tensor([0, 1000, 5]), y)
    with pytest.raises(TypeError, match="integer timestep indices"):
        net(x, t.float(), y)
    with pytest.raises(ValueError, match="divisible by patch_size 4"):
        DiT(**{**TINY, "input_size": 10, "patch_size": 4})
    with pytest.raises(ValueError, match="divisible by num_heads=5"):
        DiT(**{**TINY, "num_heads": 5})
