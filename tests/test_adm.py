"""The ADM U-Net: layout and parameter count of the released configuration, the maths of its blocks
(checked against float64 re-derivations), the two attention orders, DTR routing, guidance batching,
input errors and a short training run on digits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from zoo.models.adm import (
    ADMUNet,
    AttentionBlock,
    ResBlock,
    adm_config,
    attention_downsample_rates,
    timestep_embedding,
)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread per test process: tiny convs gain nothing from more, and a busy machine loses a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TableRouter(nn.Module):
    """A test-local router: one fixed (num_tasks, C_i) 0/1 table per block, non-persistent like real routers."""

    def __init__(
        self, channels: list[int], num_tasks: int = 1000, active: float = 0.75, seed: int = 0
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.num_tasks = num_tasks
        self.num_blocks = len(channels)
        for block, width in enumerate(channels):
            table = (torch.rand(num_tasks, width, generator=generator) < active).float()
            self.register_buffer(f"table{block}", table, persistent=False)

    def mask(self, t: torch.Tensor, block: int = 0) -> torch.Tensor:
        return getattr(self, f"table{block}")[t]


def randomize(module: nn.Module, seed: int = 0, std: float = 0.2) -> nn.Module:
    """Give the zero-initialised output convs random values so every path carries signal."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return module


def small(**overrides) -> ADMUNet:
    """A small conditional U-Net with the structure of adm_64 (3 levels, updown, scale-shift, new order)."""
    config = dict(
        image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=2,
        attention_resolutions=(2, 4), channel_mult=(1, 2, 3), num_classes=7, num_head_channels=32,
        use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=True,
    )  # fmt: skip
    config.update(overrides)
    torch.manual_seed(0)
    return ADMUNet(**config)


# ----------------------------------------------------------------------------------------------------
# Layout: the released 64x64 configuration, keys and shapes derived independently from the rules.


def expected_state_shapes(
    in_channels: int,
    model_channels: int,
    out_channels: int,
    num_res_blocks: int,
    channel_mult,
    attention_ds,
    num_classes,
    use_scale_shift_norm: bool,
    resblock_updown: bool,
    conv_resample: bool = True,
    **_: object,
) -> dict[str, tuple[int, ...]]:
    """guided-diffusion's key layout written out as a flat list of (key, shape), level by level."""
    emb = 4 * model_channels
    shapes: dict[str, tuple[int, ...]] = {}

    def param(key: str, *shape: int) -> None:
        shapes[key] = shape

    def conv(prefix, cin, cout, k, dims=2):
        param(f"{prefix}.weight", cout, cin, *([k] * dims))
        param(f"{prefix}.bias", cout)

    def norm(prefix, c):
        param(f"{prefix}.weight", c)
        param(f"{prefix}.bias", c)

    def resblock(prefix, cin, cout):
        norm(f"{prefix}.in_layers.0", cin)
        conv(f"{prefix}.in_layers.2", cin, cout, 3)
        param(f"{prefix}.emb_layers.1.weight", 2 * cout if use_scale_shift_norm else cout, emb)
        param(f"{prefix}.emb_layers.1.bias", 2 * cout if use_scale_shift_norm else cout)
        norm(f"{prefix}.out_layers.0", cout)
        conv(f"{prefix}.out_layers.3", cout, cout, 3)
        if cin != cout:
            conv(f"{prefix}.skip_connection", cin, cout, 1)

    def attention(prefix, c):
        norm(f"{prefix}.norm", c)
        conv(f"{prefix}.qkv", c, 3 * c, 1, dims=1)
        conv(f"{prefix}.proj_out", c, c, 1, dims=1)

    param("time_embed.0.weight", emb, model_channels)
    param("time_embed.0.bias", emb)
    param("time_embed.2.weight", emb, emb)
    param("time_embed.2.bias", emb)
    if num_classes is not None:
        param("label_emb.weight", num_classes, emb)

    widths = [int(m * model_channels) for m in channel_mult]
    last = len(widths) - 1
    conv("input_blocks.0.0", in_channels, widths[0], 3)
    encoder_widths = [widths[0]]  # what each input block hands to the decoder
    block = 1
    current = widths[0]
    for level, width in enumerate(widths):
        for _ in range(num_res_blocks):
            resblock(f"input_blocks.{block}.0", current, width)
            if 2**level in attention_ds:
                attention(f"input_blocks.{block}.1", width)
            current = width
            encoder_widths.append(width)
            block += 1
        if level < last:
            if resblock_updown:
                resblock(f"input_blocks.{block}.0", width, width)
            elif conv_resample:
                conv(f"input_blocks.{block}.0.op", width, width, 3)
            encoder_widths.append(width)
            block += 1

    resblock("middle_block.0", widths[-1], widths[-1])
    attention("middle_block.1", widths[-1])
    resblock("middle_block.2", widths[-1], widths[-1])

    block = 0
    for level in range(last, -1, -1):
        width = widths[level]
        for index in range(num_res_blocks + 1):
            resblock(f"output_blocks.{block}.0", current + encoder_widths.pop(), width)
            current = width
            position = 1
            if 2**level in attention_ds:
                attention(f"output_blocks.{block}.1", width)
                position = 2
            if level > 0 and index == num_res_blocks:
                if resblock_updown:
                    resblock(f"output_blocks.{block}.{position}", width, width)
                elif conv_resample:
                    conv(f"output_blocks.{block}.{position}.conv", width, width, 3)
            block += 1

    norm("out.0", widths[0])
    conv("out.2", widths[0], out_channels, 3)
    return shapes


def test_adm_64_matches_the_released_model_parameter_count_and_layout():
    config = adm_config("adm_64")
    with torch.device("meta"):
        net = ADMUNet(**config)
    assert sum(p.numel() for p in net.parameters()) == 295_904_454
    state = {key: tuple(value.shape) for key, value in net.state_dict().items()}
    expected = expected_state_shapes(attention_ds=config["attention_resolutions"], **config)
    assert state == expected
    # Facts of the released checkpoint: 16 input and 16 output blocks, 768-wide embeddings, 6 outputs.
    assert state["label_emb.weight"] == (1000, 768)
    assert state["input_blocks.0.0.weight"] == (192, 3, 3, 3)
    assert state["out.2.weight"] == (6, 192, 3, 3)
    assert state["input_blocks.5.1.qkv.weight"] == (1152, 384, 1)  # level 1 (32x32)
    assert "input_blocks.4.0.in_layers.0.weight" in state and "input_blocks.4.1.norm.weight" not in state
    assert {int(k.split(".")[1]) for k in state if k.startswith("input_blocks")} == set(range(16))
    assert {int(k.split(".")[1]) for k in state if k.startswith("output_blocks")} == set(range(16))
    assert net.learn_sigma and net.num_classes == 1000 and not net.has_null_class


@pytest.mark.parametrize("updown, conv_resample", [(True, True), (False, True), (False, False)])
def test_state_dict_round_trips_through_safetensors_with_the_documented_keys(tmp_path, updown, conv_resample):
    config = dict(adm_config("adm_64"), model_channels=32, num_head_channels=32, image_size=16)
    config.update(resblock_updown=updown, conv_resample=conv_resample)
    net = randomize(ADMUNet(**config))
    path = tmp_path / "model.safetensors"
    save_file(net.state_dict(), str(path))
    loaded = load_file(str(path))
    expected = expected_state_shapes(attention_ds=config["attention_resolutions"], **config)
    assert {key: tuple(value.shape) for key, value in loaded.items()} == expected
    fresh = ADMUNet(**config)
    fresh.load_state_dict(loaded, strict=True)
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 900]), torch.tensor([5, 999])
    net.eval(), fresh.eval()
    torch.testing.assert_close(fresh(x, t, y), net(x, t, y), rtol=0, atol=0)


def test_size_table_configs_build_with_their_documented_layouts():
    rates = attention_downsample_rates(64, (32, 16, 8))
    assert rates == adm_config("adm_64")["attention_resolutions"] == (2, 4, 8)
    assert attention_downsample_rates(256, (32, 16, 8)) == adm_config("adm_256")["attention_resolutions"]
    for name in ("adm_256", "adm_ffhq"):
        config = adm_config(name)
        with torch.device("meta"):
            net = ADMUNet(**config)
        shapes = {key: tuple(value.shape) for key, value in net.state_dict().items()}
        assert shapes == expected_state_shapes(attention_ds=config["attention_resolutions"], **config)
        assert net.num_classes == 0 and "label_emb.weight" not in shapes
    assert adm_config("adm_t", image_size=8)["image_size"] == 8
    with pytest.raises(KeyError, match="adm_64"):
        adm_config("adm_65")
    with pytest.raises(TypeError, match="hidden_size"):
        adm_config("adm_t", hidden_size=3)


# ----------------------------------------------------------------------------------------------------
# Shapes through every level.


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"resblock_updown": False, "use_scale_shift_norm": False},
        {"resblock_updown": False, "conv_resample": False, "num_head_channels": -1, "num_heads": 2},
        {"num_head_channels": -1, "num_heads": 4, "num_heads_upsample": 2, "use_new_attention_order": False},
        {
            "channel_mult": (0.5, 1, 1.5),
            "model_channels": 64,
            "attention_resolutions": (1, 4),
            "num_classes": None,
            "num_res_blocks": 1,
        },
    ],
)
def test_shapes_through_every_level_and_attention_placement(overrides):
    net = small(**overrides).eval()
    mult = overrides.get("channel_mult", (1, 2, 3))
    blocks = overrides.get("num_res_blocks", 2)
    attention_ds = overrides.get("attention_resolutions", (2, 4))
    widths = [int(m * overrides.get("model_channels", 32)) for m in mult]

    expected_in = [(widths[0], 16)]
    for level, width in enumerate(widths):
        expected_in += [(width, 16 >> level)] * blocks
        if level < len(widths) - 1:
            expected_in.append((width, 16 >> (level + 1)))
    expected_out = []
    for level in reversed(range(len(widths))):
        expected_out += [(widths[level], 16 >> level)] * blocks
        expected_out.append((widths[level], 16 >> (level - 1) if level else 16))

    seen: dict[str, list[tuple[int, int]]] = {"in": [], "mid": [], "out": []}

    def recorder(kind):
        return lambda module, args, output: seen[kind].append((output.shape[1], output.shape[2]))

    for block in net.input_blocks:
        block.register_forward_hook(recorder("in"))
    net.middle_block.register_forward_hook(recorder("mid"))
    for block in net.output_blocks:
        block.register_forward_hook(recorder("out"))
    y = None if overrides.get("num_classes", 7) is None else torch.tensor([0, 6])
    out = net(torch.randn(2, 3, 16, 16), torch.tensor([0, 999]), y)

    assert out.shape == (2, 6, 16, 16)
    assert seen["in"] == expected_in
    assert seen["mid"] == [(widths[-1], 16 >> (len(widths) - 1))]
    assert seen["out"] == expected_out
    # Attention sits exactly at the requested downsample rates (resolution 16 / ds), plus the middle.
    attention_sizes = set()
    for module in net.modules():
        if isinstance(module, AttentionBlock):
            attention_sizes.add(module.qkv.in_channels)
    for level, width in enumerate(widths):
        assert (width in attention_sizes) == (2**level in attention_ds or level == len(widths) - 1)
    heads = {module.num_heads for module in net.modules() if isinstance(module, AttentionBlock)}
    if overrides.get("num_head_channels", 32) != -1:
        assert heads == {width // 32 for width in widths if width in attention_sizes}
    elif "num_heads_upsample" in overrides:
        assert heads == {4, 2}


def test_fresh_model_outputs_zeros_because_output_convs_start_at_zero():
    net = ADMUNet(**adm_config("adm_t")).eval()
    out = net(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 500, 999]), torch.tensor([0, 3, 9, 10]))
    assert out.shape == (4, 2, 8, 8) and not out.any()
    zero_init = ("out_layers.3", "proj_out", "out.2")
    zero_weights = {name for name, p in net.named_parameters() if name.endswith("weight") and not p.any()}
    expected = {
        name for name, _ in net.named_parameters() if name.endswith(tuple(f"{z}.weight" for z in zero_init))
    }
    assert zero_weights == expected and "out.2.weight" in expected
    assert all(
        not p.any()
        for name, p in net.named_parameters()
        if name.endswith(tuple(f"{z}.bias" for z in zero_init))
    )
    randomize(net)
    assert net(torch.randn(1, 1, 8, 8), torch.tensor([5]), torch.tensor([2])).abs().sum() > 0


# ----------------------------------------------------------------------------------------------------
# Maths of the pieces, against float64 re-derivations.


def test_timestep_embedding_is_cos_then_sin_of_geometric_frequencies():
    t = torch.tensor([0, 1, 37, 999])
    embedding = timestep_embedding(t, 9).double()
    half = 4
    for row, step in enumerate(t.tolist()):
        for k in range(half):
            frequency = 10000.0 ** (-k / half)
            assert embedding[row, k].item() == pytest.approx(math.cos(step * frequency), abs=1e-4)
            assert embedding[row, half + k].item() == pytest.approx(math.sin(step * frequency), abs=1e-4)
        assert embedding[row, 8] == 0


def reference_resblock(block: ResBlock, x, emb, mask, up=False, down=False):
    """skip(x) + F(x * m) with functional ops in float64 (GroupNorm 32 groups, SiLU, conv, scale-shift)."""
    w = {name: p.detach().double() for name, p in block.named_parameters()}
    x, emb = x.double(), emb.double()

    def resample(v):
        if up:
            return v.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        if down:
            return (v[:, :, 0::2, 0::2] + v[:, :, 1::2, 0::2] + v[:, :, 0::2, 1::2] + v[:, :, 1::2, 1::2]) / 4
        return v

    h = x * mask.double()[:, :, None, None]
    h = F.silu(F.group_norm(h, 32, w["in_layers.0.weight"], w["in_layers.0.bias"]))
    h = F.conv2d(resample(h), w["in_layers.2.weight"], w["in_layers.2.bias"], padding=1)
    e = F.linear(F.silu(emb), w["emb_layers.1.weight"], w["emb_layers.1.bias"])[:, :, None, None]
    if block.use_scale_shift_norm:
        scale, shift = e.chunk(2, dim=1)
        h = F.group_norm(h, 32, w["out_layers.0.weight"], w["out_layers.0.bias"]) * (1 + scale) + shift
    else:
        h = F.group_norm(h + e, 32, w["out_layers.0.weight"], w["out_layers.0.bias"])
    h = F.conv2d(F.silu(h), w["out_layers.3.weight"], w["out_layers.3.bias"], padding=1)
    skip = resample(x)
    if "skip_connection.weight" in w:
        skip = F.conv2d(skip, w["skip_connection.weight"], w["skip_connection.bias"])
    return skip + h


@pytest.mark.parametrize(
    "cin, cout, scale_shift, up, down",
    [(64, 64, True, False, False), (64, 96, False, False, False), (96, 64, True, False, False),
     (64, 64, True, False, True), (64, 64, False, True, False)],
)  # fmt: skip
def test_routed_resblock_is_full_skip_plus_branch_of_masked_input(cin, cout, scale_shift, up, down):
    torch.manual_seed(1)
    block = randomize(ResBlock(cin, 40, 0.0, cout, scale_shift, up=up, down=down)).eval()
    x, emb = torch.randn(3, cin, 8, 8), torch.randn(3, 40)
    mask = (torch.rand(3, cin) < 0.6).float()
    routed = block(x, emb, mask)
    torch.testing.assert_close(
        routed.double(), reference_resblock(block, x, emb, mask, up, down), rtol=1e-5, atol=1e-5
    )
    ones = torch.ones(3, cin)
    torch.testing.assert_close(block(x, emb, ones), block(x, emb), rtol=0, atol=0)
    torch.testing.assert_close(
        block(x, emb).double(), reference_resblock(block, x, emb, ones, up, down), rtol=1e-5, atol=1e-5
    )
    # The mask gates only the branch: the skip path still carries the masked-out channels.
    assert not torch.allclose(routed, block(x, emb))
    if cin == cout and not (up or down):
        zero = torch.zeros(3, cin)
        branch_of_zeros = block(torch.zeros_like(x), emb)  # F(0), since skip(0) = 0
        torch.testing.assert_close(block(x, emb, zero), x + branch_of_zeros)


def reference_attention(qkv: torch.Tensor, heads: int, new_order: bool) -> torch.Tensor:
    """Multi-head attention over (B, 3C, T) in float64 with explicit per-head loops."""
    qkv = qkv.double()
    batch, width, length = qkv.shape
    channels = width // 3
    d = channels // heads
    out = torch.zeros(batch, channels, length, dtype=torch.float64)
    for b in range(batch):
        for head in range(heads):
            if (
                new_order
            ):  # q = rows [0, C), k = [C, 2C), v = [2C, 3C); head h takes rows [h d, (h+1) d) of each
                q = qkv[b, head * d : (head + 1) * d]
                k = qkv[b, channels + head * d : channels + (head + 1) * d]
                v = qkv[b, 2 * channels + head * d : 2 * channels + (head + 1) * d]
            else:  # head h owns rows [3 h d, 3 (h+1) d) = its q, then k, then v
                base = 3 * head * d
                q, k, v = (
                    qkv[b, base : base + d],
                    qkv[b, base + d : base + 2 * d],
                    qkv[b, base + 2 * d : base + 3 * d],
                )
            weights = torch.softmax(q.T @ k / math.sqrt(d), dim=-1)  # (T, T): query position x key position
            out[b, head * d : (head + 1) * d] = v @ weights.T
    return out


def test_attention_orders_differ_on_the_same_weights_and_each_matches_its_reference():
    torch.manual_seed(2)
    new = randomize(AttentionBlock(64, num_heads=4, use_new_attention_order=True)).eval()
    legacy = AttentionBlock(64, num_heads=4, use_new_attention_order=False).eval()
    legacy.load_state_dict(new.state_dict())  # same keys and shapes: loading never complains
    x = torch.randn(2, 64, 4, 4)
    w = {name: p.detach().double() for name, p in new.named_parameters()}
    flat = x.double().reshape(2, 64, 16)
    qkv = F.conv1d(F.group_norm(flat, 32, w["norm.weight"], w["norm.bias"]), w["qkv.weight"], w["qkv.bias"])
    for block, new_order in ((new, True), (legacy, False)):
        reference = flat + F.conv1d(
            reference_attention(qkv, 4, new_order), w["proj_out.weight"], w["proj_out.bias"]
        )
        torch.testing.assert_close(block(x).double(), reference.reshape(2, 64, 4, 4), rtol=1e-5, atol=1e-5)
    assert (new(x) - legacy(x)).abs().max() > 1e-2
    # One head: the orders coincide (q, k, v are the same three row blocks).
    one_new = randomize(AttentionBlock(64, num_heads=1, use_new_attention_order=True)).eval()
    one_legacy = AttentionBlock(64, num_heads=1)
    one_legacy.load_state_dict(one_new.state_dict())
    torch.testing.assert_close(one_new(x), one_legacy.eval()(x))


def test_groupnorm_runs_in_float32_and_returns_the_input_dtype():
    net = small()
    norm = net.out[0]
    x = torch.randn(2, 32, 4, 4).to(torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    expected = F.group_norm(x.float(), 32, norm.weight, norm.bias).to(torch.bfloat16)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------
# Routing through the whole U-Net.


def test_router_channels_are_resblock_input_widths_in_documented_order():
    net = small()
    blocks = [m for part in (net.input_blocks, [net.middle_block], net.output_blocks) for seq in part
              for m in (seq if isinstance(seq, nn.Sequential) else [seq]) if isinstance(m, ResBlock)]  # fmt: skip
    assert net.router_channels() == [block.in_layers[0].num_channels for block in blocks]
    assert [block.route_index for block in blocks] == list(range(len(blocks)))
    # 3 levels x 2 blocks + 2 down, 2 middle, 3 levels x 3 blocks + 2 up.
    assert len(blocks) == 8 + 2 + 11


def test_every_resblock_receives_its_own_router_mask():
    net = small()
    router = TableRouter(net.router_channels())
    net.set_router(router)
    received: dict[int, torch.Tensor] = {}

    def capture(module, args):
        received[module.route_index] = args[2]

    for module in net.modules():
        if isinstance(module, ResBlock):
            module.register_forward_pre_hook(capture)
    t = torch.tensor([4, 650])
    net(torch.randn(2, 3, 16, 16), t, torch.tensor([1, 2]))
    assert sorted(received) == list(range(len(net.router_channels())))
    for block, mask in received.items():
        torch.testing.assert_close(mask, router.mask(t, block=block), rtol=0, atol=0)


def test_all_ones_router_equals_no_router_and_routing_keeps_the_state_dict():
    net = randomize(small(dropout=0.0)).eval()
    x, t, y = torch.randn(3, 3, 16, 16), torch.tensor([0, 321, 999]), torch.tensor([0, 3, 6])
    plain = net(x, t, y)
    keys_before = {k: v.clone() for k, v in net.state_dict().items()}
    net.set_router(TableRouter(net.router_channels(), active=1.0))
    torch.testing.assert_close(net(x, t, y), plain, rtol=0, atol=0)
    net.set_router(TableRouter(net.router_channels(), active=0.7))
    routed = net(x, t, y)
    assert (routed - plain).abs().max() > 1e-3
    state = net.state_dict()
    assert state.keys() == keys_before.keys()
    assert all(torch.equal(state[k], keys_before[k]) for k in state)
    net.set_router(None)
    assert net.router is None
    torch.testing.assert_close(net(x, t, y), plain, rtol=0, atol=0)


def test_router_with_wrong_widths_is_rejected_with_the_expected_shape():
    net = small()
    net.set_router(TableRouter([16] * len(net.router_channels())))
    with pytest.raises(ValueError, match=r"block=0.*\(2, 32\)"):
        net(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="mask"):
        net.set_router(object())


def test_real_dtr_router_when_the_routing_package_provides_it():
    routing = pytest.importorskip("routing")
    if not hasattr(routing, "build"):
        pytest.skip("routing.build not available yet")
    net = randomize(small(dropout=0.0)).eval()
    channels = net.router_channels()
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([10, 800]), torch.tensor([0, 1])
    plain = net(x, t, y)
    keys = set(net.state_dict())
    router = routing.build(
        "dtr", channels=channels, num_blocks=len(channels), num_tasks=1000, beta=0.8, alpha=4.0
    )
    net.set_router(router)
    assert set(net.state_dict()) == keys
    routed = net(x, t, y)
    assert routed.shape == plain.shape and (routed - plain).abs().max() > 1e-3
    full = routing.build(
        "dtr", channels=channels, num_blocks=len(channels), num_tasks=1000, beta=1.0, alpha=4.0
    )
    net.set_router(full)
    torch.testing.assert_close(net(x, t, y), plain)


# ----------------------------------------------------------------------------------------------------
# Labels, guidance and errors.


def test_guidance_batching_matches_separate_passes_and_training_drops_labels():
    net = randomize(small(class_dropout_prob=0.1, dropout=0.0)).eval()
    assert net.has_null_class and net.label_emb.num_embeddings == 8
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([100, 700]), torch.tensor([3, 5])
    null = torch.full_like(y, net.num_classes)
    batched = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
    cond, uncond = net(x, t, y), net(x, t, null)
    # oneDNN picks batch-size-dependent fp32 conv kernels (seen ~2e-5 apart); a batching error (labels
    # swapped or dropped) moves outputs by the cond/uncond gap, which is far above the tolerance
    assert (cond - uncond).abs().max() > 1e-2
    torch.testing.assert_close(batched, torch.cat([cond, uncond]), rtol=1e-4, atol=1e-4)

    net.class_dropout_prob = 0.5
    xs, ts, ys = x[:1].expand(64, -1, -1, -1), t[:1].expand(64), y[:1].expand(64)
    with torch.no_grad():
        kept, dropped = net(x[:1], t[:1], y[:1]), net(x[:1], t[:1], null[:1])
        net.train()
        out = net(xs, ts, ys)
    is_kept = (out - kept).flatten(1).abs().amax(1) < 1e-4
    is_dropped = (out - dropped).flatten(1).abs().amax(1) < 1e-4
    assert bool((is_kept ^ is_dropped).all()) and is_kept.any() and is_dropped.any()


def test_bad_inputs_raise_errors_naming_the_expected_values():
    net = small()
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        net(torch.randn(2, 3, 8, 8), t, y)
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        net(torch.randn(2, 1, 16, 16), t, y)
    with pytest.raises(ValueError, match="pass labels"):
        net(x, t)
    with pytest.raises(ValueError, match="class_dropout_prob > 0"):
        net(x, t, torch.tensor([1, 7]))  # 7 = num_classes: no null class without label dropout
    with pytest.raises(ValueError, match=r"\(2,\)"):
        net(x, torch.tensor([1, 2, 3]), y)
    with pytest.raises(ValueError, match="integer"):
        net(x, t, y.float())
    unconditional = small(num_classes=None)
    with pytest.raises(ValueError, match="unconditional"):
        unconditional(x, t, y)
    with pytest.raises(ValueError, match=r"\[1, 2, 4\]"):
        small(attention_resolutions=(8,))
    with pytest.raises(ValueError, match="num_head_channels 48"):
        small(num_head_channels=48)
    with pytest.raises(ValueError, match="divisible by 32"):
        small(model_channels=48)
    with pytest.raises(ValueError, match="divisible by 2"):
        small(image_size=18)
    with pytest.raises(ValueError, match="num_classes"):
        small(num_classes=None, class_dropout_prob=0.1)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(3)
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([5, 500]), torch.tensor([1, 2])
    grads = []
    for use_checkpoint in (False, True):
        net = randomize(small(dropout=0.0, use_checkpoint=use_checkpoint)).train()
        net.set_router(TableRouter(net.router_channels()))
        net(x, t, y).square().mean().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# A few optimisation steps of adm_t on digits.


def test_adm_t_learns_to_denoise_digits():
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 8.0 - 1.0  # 8x8 in [-1, 1]
    labels = torch.tensor(load_digits().target)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0).float()

    def eps_mse(net, x0, y, t, noise):
        a = alpha_bar[t][:, None, None, None]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return (net(x_t, t, y)[:, :1] - noise).square().mean()

    torch.manual_seed(0)
    net = ADMUNet(**adm_config("adm_t"))
    generator = torch.Generator().manual_seed(1)
    eval_index = torch.arange(0, 256, 2)
    eval_t = torch.randint(0, 1000, (128,), generator=generator)
    eval_noise = torch.randn(128, 1, 8, 8, generator=generator)

    def evaluate():
        net.eval()
        with torch.no_grad():
            return eps_mse(net, images[eval_index], labels[eval_index], eval_t, eval_noise).item()

    before = evaluate()
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    net.train()
    for _ in range(25):
        index = torch.randint(0, len(images), (32,), generator=generator)
        t = torch.randint(0, 1000, (32,), generator=generator)
        noise = torch.randn(32, 1, 8, 8, generator=generator)
        loss = eps_mse(net, images[index], labels[index], t, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluate()
    assert before == pytest.approx(eval_noise.square().mean().item())  # zero output at init
    assert after < 0.5 * before
