"""Routing: exact DTR masks from the rule, random routing, the registry, configs, checkpoints and wiring."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest
import torch
from torch import nn
from zoo.models import DiT
from zoo.models.adm import ADMUNet
from zoo.models.dit import DiTBlock
from zoo.routing import registry as routing_registry

from zoo import routing
from zoo.diffusion import GaussianDiffusion


def expected_code_table(channels: int, num_tasks: int, beta: Fraction, alpha: int) -> torch.Tensor:
    """The released-code DTR rule with exact rationals (integer alpha) and Python's half-to-even round()."""
    n_act = math.floor(channels * beta)
    table = torch.zeros(num_tasks, channels)
    for t in range(num_tasks):
        start = round(Fraction(t, num_tasks - 1) ** alpha * (channels - n_act)) if num_tasks > 1 else 0
        for c in range(channels):
            table[t, c] = float(start <= c < start + n_act)
    return table


def expected_paper_table(channels: int, num_tasks: int, beta: Fraction, alpha: int) -> torch.Tensor:
    """The paper's formula: 1-indexed tasks, window [round(s (t-1)/T)^a), round(s (t/T)^a) + C_beta)."""
    n_act = math.floor(channels * beta)
    spare = channels - n_act
    table = torch.zeros(num_tasks, channels)
    for t in range(1, num_tasks + 1):
        low = round(spare * Fraction(t - 1, num_tasks) ** alpha)
        high = round(spare * Fraction(t, num_tasks) ** alpha) + n_act
        for c in range(channels):
            table[t - 1, c] = float(low <= c < high)
    return table


# ---------------------------------------------------------------- DTR tables


def test_dtr_worked_example_dit_l() -> None:
    """Issue 3's worked example: C=1024, beta 0.8, alpha 4, T=1000."""
    table = routing.dtr_table(1024, num_tasks=1000, beta=0.8, alpha=4.0)
    assert table.shape == (1000, 1024) and table.dtype == torch.float32
    n_act = 1024 * 4 // 5
    assert n_act == 819
    starts = [round(Fraction(t, 999) ** 4 * (1024 - n_act)) for t in range(1000)]
    assert all(start == 0 for start in starts[:223]) and starts[223] == 1
    assert (starts[750], starts[900], starts[999]) == (65, 135, 205)
    expected = torch.zeros(1000, 1024)
    for t, start in enumerate(starts):
        expected[t, start : start + n_act] = 1.0
    assert torch.equal(table, expected)
    assert len(set(starts)) == 206
    assert len({tuple(row) for row in table.to(torch.int8).tolist()}) == 206
    shared = [c for c in range(1024) if all(start <= c < start + n_act for start in set(starts))]
    assert len(shared) == 614


@pytest.mark.parametrize(
    ("channels", "num_tasks", "beta", "alpha"),
    [(16, 9, "3/4", 4), (10, 3, "1/5", 4), (7, 5, "1/2", 1), (33, 40, "4/5", 2), (64, 17, "9/10", 3)],
)
def test_dtr_code_rule_matches_exact_rationals(channels: int, num_tasks: int, beta: str, alpha: int) -> None:
    # (10, 3, 1/5, 4) has a tie: (1/2)^4 * 8 = 0.5 -> rounds half to even, to 0.
    table = routing.dtr_table(channels, num_tasks, float(Fraction(beta)), float(alpha))
    assert torch.equal(table, expected_code_table(channels, num_tasks, Fraction(beta), alpha))


def test_dtr_code_rule_non_integer_alpha_matches_float64_formula() -> None:
    channels, num_tasks, beta, alpha = 48, 30, 0.75, 2.5
    n_act = int(channels * beta)
    table = routing.dtr_table(channels, num_tasks, beta, alpha)
    for t in range(num_tasks):
        start = round((t / (num_tasks - 1)) ** alpha * (channels - n_act))
        assert table[t].nonzero().flatten().tolist() == list(range(start, start + n_act))


def test_dtr_window_slides_from_bottom_to_top() -> None:
    table = routing.dtr_table(96, num_tasks=200, beta=0.7, alpha=4.0)
    n_act = int(96 * 0.7)
    first_active = table.argmax(dim=1)
    assert torch.all(table.sum(dim=1) == n_act)
    assert first_active[0] == 0 and first_active[-1] == 96 - n_act
    assert torch.all(first_active[1:] >= first_active[:-1])
    # alpha > 1: the window barely moves at low noise and moves fast at high noise.
    assert first_active[100] - first_active[0] < first_active[-1] - first_active[100]


@pytest.mark.parametrize(("channels", "num_tasks", "beta", "alpha"), [(16, 9, "3/4", 4), (40, 25, "4/5", 2)])
def test_dtr_paper_variant_matches_its_formula(channels: int, num_tasks: int, beta: str, alpha: int) -> None:
    table = routing.dtr_table(channels, num_tasks, float(Fraction(beta)), float(alpha), variant="paper")
    assert torch.equal(table, expected_paper_table(channels, num_tasks, Fraction(beta), alpha))


def test_dtr_paper_variant_differs_slightly_from_code() -> None:
    code = routing.dtr_table(1024, variant="code")
    paper = routing.dtr_table(1024, variant="paper")
    widths = paper.sum(dim=1)
    assert not torch.equal(code, paper)
    assert widths.min() == 819 and widths.max() == 820  # the paper's window can be one channel wider
    assert paper[-1, -1] == 1 and paper[0, 0] == 1
    assert (code != paper).sum(dim=1).max() <= 2


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_beta_one_is_all_ones(variant: str) -> None:
    assert torch.equal(routing.dtr_table(24, 50, beta=1.0, variant=variant), torch.ones(50, 24))
    assert torch.equal(routing.random_table(24, 50, beta=1.0, seed=3), torch.ones(50, 24))


# ---------------------------------------------------------------- random routing


def test_random_table_exact_count_and_determinism() -> None:
    table = routing.random_table(40, num_tasks=300, beta=0.6, seed=7)
    assert table.shape == (300, 40)
    assert set(table.unique().tolist()) == {0.0, 1.0}
    assert torch.all(table.sum(dim=1) == 24)
    assert torch.equal(table, routing.random_table(40, num_tasks=300, beta=0.6, seed=7))
    assert not torch.equal(table, routing.random_table(40, num_tasks=300, beta=0.6, seed=8))
    assert len({tuple(row) for row in table.tolist()}) > 250  # not one shared mask


def test_random_table_is_uniform_over_channels() -> None:
    """Each channel is active with probability beta: counts within 6 binomial standard deviations."""
    num_tasks, beta = 4000, 0.5
    counts = routing.random_table(16, num_tasks=num_tasks, beta=beta, seed=0).sum(dim=0)
    sd = math.sqrt(num_tasks * beta * (1 - beta))
    assert torch.all((counts - num_tasks * beta).abs() < 6 * sd)


def test_random_router_per_block_tables() -> None:
    router = routing.build("random", channels=[12, 12, 20], num_blocks=3, num_tasks=50, beta=0.5, seed=5)
    assert torch.equal(router.table(0), routing.random_table(12, num_tasks=50, beta=0.5, seed=5))
    assert not torch.equal(router.table(0), router.table(1))
    assert router.table(2).shape == (50, 20) and torch.all(router.table(2).sum(dim=1) == 10)
    rebuilt = routing.build(**router.config())
    other_seed = routing.build("random", channels=[12, 12, 20], num_blocks=3, num_tasks=50, beta=0.5, seed=6)
    for block in range(3):
        assert torch.equal(router.table(block), rebuilt.table(block))
        assert not torch.equal(router.table(block), other_seed.table(block))


# ---------------------------------------------------------------- routers


def test_dtr_router_mask_gathers_table_rows() -> None:
    router = routing.DTRRouter(64, num_blocks=4, num_tasks=100, beta=0.75, alpha=3.0)
    t = torch.tensor([0, 99, 50, 50, 7])
    expected = routing.dtr_table(64, 100, 0.75, 3.0)[t]
    for block in range(4):
        mask = router.mask(t, block=block)
        assert mask.dtype == torch.float32 and torch.equal(mask, expected)
    assert router.mask(t, dtype=torch.bfloat16).dtype == torch.bfloat16
    # Masks depend on t only: one sample's mask does not change with the rest of the batch.
    assert torch.equal(router.mask(t[2:3])[0], router.mask(t)[2])


def test_multi_width_router_keeps_one_table_per_width() -> None:
    widths = [8, 16, 32, 16, 8]
    router = routing.build("dtr", channels=widths, num_blocks=5, num_tasks=40, beta=0.5, alpha=2.0)
    assert router.channels == widths
    assert sorted(name for name, _ in router.named_buffers()) == ["table_16", "table_32", "table_8"]
    assert router.table_bool(0) is router.table_bool(4)
    t = torch.arange(40)
    for block, width in enumerate(widths):
        assert torch.equal(router.mask(t, block), routing.dtr_table(width, 40, 0.5, 2.0))


@pytest.mark.parametrize(
    "router",
    [
        routing.build("dtr", channels=32, num_blocks=3, num_tasks=20, beta=0.5, alpha=2.0, variant="paper"),
        routing.build("dtr", channels=[8, 16], num_blocks=2, num_tasks=20),
        routing.build("random", channels=16, num_blocks=2, num_tasks=20, beta=0.25, seed=11),
    ],
)
def test_config_round_trip_through_json(router: routing.Router) -> None:
    config = json.loads(json.dumps(router.config()))
    rebuilt = routing.build(**config)
    assert type(rebuilt) is type(router) and rebuilt.config() == router.config()
    t = torch.arange(20)
    for block in range(router.num_blocks):
        assert torch.equal(rebuilt.mask(t, block), router.mask(t, block))


def test_registry_lists_builds_and_suggests() -> None:
    assert {"dtr", "random", "none"} <= set(routing.list_routers())
    assert routing.build("none", channels=64, num_blocks=4) is None
    assert isinstance(routing.build("dtr", channels=8, num_tasks=10), routing.DTRRouter)
    with pytest.raises(ValueError, match=r"Did you mean \['dtr'\]"):
        routing.build("dtrr", channels=8)


def test_registering_a_new_kind_is_one_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routing_registry, "_ROUTERS", dict(routing_registry._ROUTERS))

    @routing.register_router("lowhalf")
    class LowHalfRouter(routing.Router):
        """Tasks below T/2 use the first half of the channels, the others all channels."""

        def __init__(self, channels, num_blocks=1, num_tasks=1000):
            super().__init__(channels, num_blocks=num_blocks, num_tasks=num_tasks)
            table = torch.ones(num_tasks, self.channels[0], dtype=torch.bool)
            table[: num_tasks // 2, self.channels[0] // 2 :] = False
            self.register_buffer("low_half", table, persistent=False)

        def table_bool(self, block):
            return self.low_half

        def options(self):
            return {}

    router = routing.build(**{"name": "lowhalf", "channels": 4, "num_tasks": 4})
    assert isinstance(router, LowHalfRouter) and "lowhalf" in routing.list_routers()
    assert router.mask(torch.tensor([1, 3])).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    with pytest.raises(ValueError, match="already registered"):
        routing.register_router("dtr")(LowHalfRouter)


def test_tables_never_enter_the_state_dict() -> None:
    class Host(nn.Module):
        def __init__(self, router: routing.Router | None) -> None:
            super().__init__()
            self.linear = nn.Linear(8, 8)
            self.router = router

    plain = Host(None)
    for router in (routing.build("dtr", 8, num_blocks=3, num_tasks=10), routing.build("random", 8, 3, 10)):
        assert router.state_dict() == {}
        routed = Host(router)
        routed_state, plain_state = routed.state_dict(), plain.state_dict()
        assert list(routed_state) == list(plain_state)
        assert all(routed_state[key].shape == plain_state[key].shape for key in plain_state)
        routed.to(torch.float64)  # tables stay compact bool and keep serving float masks
        assert all(buffer.dtype == torch.bool for buffer in router.buffers())
        assert router.mask(torch.tensor([3])).dtype == torch.float32


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta": 0.0}, r"\(0, 1\]"),
        ({"beta": 1.5}, r"\(0, 1\]"),
        ({"beta": float("nan")}, r"\(0, 1\]"),
        ({"beta": 0.01}, "at least 1 active channel"),
        ({"alpha": 0.0}, "> 0"),
        ({"alpha": -2.0}, "> 0"),
        ({"channels": 0}, ">= 1"),
        ({"channels": [16, 0]}, ">= 1"),
        ({"channels": [16, 16, 16]}, "expected 2 widths"),
        ({"num_tasks": 0}, ">= 1"),
        ({"num_blocks": 0}, ">= 1"),
        ({"variant": "legacy"}, "code"),
    ],
)
def test_invalid_hyperparameters_are_rejected(kwargs: dict, message: str) -> None:
    arguments = {"channels": 16, "num_blocks": 2, "num_tasks": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        routing.build("dtr", **arguments)


def test_invalid_table_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        routing.random_table(16, beta=0.0)
    with pytest.raises(ValueError, match="> 0"):
        routing.dtr_table(16, alpha=-1.0)
    with pytest.raises(ValueError, match="integer"):
        routing.build("random", channels=16, seed=1.5)


@pytest.mark.parametrize(
    ("t", "block", "message"),
    [
        (torch.tensor([0, 10]), 0, r"\[0, 10\)"),
        (torch.tensor([-1, 3]), 0, r"\[0, 10\)"),
        (torch.tensor([[1, 2]]), 0, "1-D"),
        (torch.tensor([1.0, 2.0]), 0, "integer"),
        (torch.tensor([1, 2]), 2, r"\[0, 2\)"),
        (torch.tensor([1, 2]), -1, r"\[0, 2\)"),
    ],
)
def test_invalid_mask_calls_are_rejected(t: torch.Tensor, block: int, message: str) -> None:
    router = routing.build("dtr", channels=16, num_blocks=2, num_tasks=10)
    with pytest.raises(ValueError, match=message):
        router.mask(t, block=block)


def test_in_place_change_of_checked_timesteps_is_revalidated() -> None:
    router = routing.build("dtr", channels=16, num_blocks=2, num_tasks=10)
    t = torch.tensor([1, 2])
    router.mask(t, block=0)
    t[0] = 10
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        router.mask(t, block=1)


# ---------------------------------------------------------------- diagnostics


def test_describe_table_on_the_worked_example() -> None:
    summary = routing.describe_table(routing.dtr_table(1024))
    assert summary["active_per_task"] == [819] * 1000
    assert summary["min_active"] == summary["max_active"] == 819
    assert summary["always_active"] == 614 and summary["distinct_masks"] == 206
    assert summary["never_active"] == 0 and (summary["num_tasks"], summary["channels"]) == (1000, 1024)
    json.dumps(summary)


def test_describe_table_counts_by_brute_force() -> None:
    table = routing.random_table(6, num_tasks=12, beta=0.5, seed=2)
    table[:, 5] = 0.0
    rows = [tuple(row) for row in table.tolist()]
    summary = routing.describe_table(table)
    assert summary["active_per_task"] == [sum(row) for row in rows]
    assert summary["always_active"] == sum(all(row[c] for row in rows) for c in range(6))
    assert summary["never_active"] == sum(not any(row[c] for row in rows) for c in range(6))
    assert summary["distinct_masks"] == len(set(rows))
    with pytest.raises(ValueError, match="only 0 and 1"):
        routing.describe_table(table * 2)


def test_plot_table_writes_a_png(tmp_path) -> None:
    from PIL import Image

    path = routing.plot_table(routing.dtr_table(64, num_tasks=100), tmp_path / "figures" / "dtr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        pixels = image.convert("L")
        darkest, lightest = pixels.getextrema()
        assert darkest < 64 and lightest > 192  # dark active channels, light inactive ones


# ---------------------------------------------------------------- wiring into backbones


def tiny_dit(router: routing.Router | None = None, seed: int = 0) -> nn.Module:
    """A small DiT with every parameter perturbed, so adaLN-Zero blocks are not the identity."""

    torch.manual_seed(seed)
    net = DiT(
        input_size=8,
        patch_size=2,
        in_channels=4,
        hidden_size=32,
        depth=3,
        num_heads=4,
        num_classes=10,
        router=router,
    )
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return net.eval()


def test_routed_dit_block_is_x_plus_block_of_masked_x() -> None:

    torch.manual_seed(0)
    block = DiTBlock(hidden_size=32, num_heads=4).double()
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.copy_(0.2 * torch.randn_like(parameter))
    x, c = torch.randn(3, 5, 32, dtype=torch.float64), torch.randn(3, 32, dtype=torch.float64)
    router = routing.build("dtr", channels=32, num_tasks=100, beta=0.5)
    mask = router.mask(torch.tensor([0, 60, 99]), dtype=torch.float64)
    masked = x * mask[:, None, :]
    residual_branch = block(masked, c) - masked  # Block(z), from the plain block z + Block(z)
    torch.testing.assert_close(block(x, c, mask), x + residual_branch, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(block(x, c, mask), block(x, c))


def test_dit_applies_the_router_mask_of_each_block_and_timestep() -> None:
    router = routing.build("random", channels=32, num_blocks=3, num_tasks=1000, beta=0.5, seed=4)
    net = tiny_dit(router)
    seen: dict[int, torch.Tensor] = {}
    for index, block in enumerate(net.blocks):
        block.register_forward_pre_hook(lambda module, args, index=index: seen.__setitem__(index, args[2]))
    t = torch.tensor([3, 500, 999])
    net(torch.randn(3, 4, 8, 8), t, torch.tensor([1, 2, 3]))
    for index in range(3):
        torch.testing.assert_close(seen[index], router.table(index)[t], rtol=0, atol=0)


def test_beta_one_routed_dit_equals_plain_dit_and_state_dicts_match() -> None:
    plain = tiny_dit(None)
    x, t, y = torch.randn(4, 4, 8, 8), torch.tensor([0, 10, 500, 999]), torch.tensor([0, 1, 2, 3])
    expected = plain(x, t, y)
    for router in (
        routing.build("dtr", 32, num_blocks=3, beta=1.0),
        routing.build("random", 32, 3, beta=1.0),
    ):
        routed = tiny_dit(router, seed=1)
        routed.load_state_dict(plain.state_dict(), strict=True)
        assert torch.equal(routed(x, t, y), expected)
    dtr = tiny_dit(routing.build("dtr", 32, num_blocks=3, beta=0.8), seed=1)
    dtr.load_state_dict(plain.state_dict(), strict=True)
    assert not torch.allclose(dtr(x, t, y), expected)  # routing with beta < 1 does change the network


@pytest.mark.parametrize("name", ["dtr", "random"])
def test_routed_dit_state_dict_has_the_plain_keys_and_sizes(name: str) -> None:
    plain_state = tiny_dit(None).state_dict()
    routed = tiny_dit(routing.build(name, channels=32, num_blocks=3))
    routed_state = routed.state_dict()
    assert list(routed_state) == list(plain_state)
    assert {key: value.shape for key, value in routed_state.items()} == {
        key: value.shape for key, value in plain_state.items()
    }
    assert any(name.startswith("router.") for name, _ in routed.named_buffers())  # the tables live on the net


def test_respaced_sampling_masks_follow_the_original_timesteps() -> None:

    router = routing.build("dtr", channels=32, num_blocks=3, num_tasks=1000, beta=0.5, alpha=2.0)
    net = tiny_dit(router)
    masks: list[torch.Tensor] = []
    net.blocks[1].register_forward_pre_hook(lambda module, args: masks.append(args[2].clone()))
    timesteps: list[torch.Tensor] = []
    net.register_forward_pre_hook(lambda module, args: timesteps.append(args[1].clone()))
    diffusion = GaussianDiffusion(schedule="linear", num_timesteps=1000, learn_sigma=True)
    generator = torch.Generator().manual_seed(0)
    diffusion.sample(net, (2, 4, 8, 8), y=torch.tensor([1, 2]), sampler="ddim", steps=5, generator=generator)
    original = diffusion.respace("ddim5").timestep_map.flip(0)
    assert torch.equal(torch.stack([t[0] for t in timesteps]), original)
    assert original.max() > 5  # original indices, not the respaced steps 0..4
    table = routing.dtr_table(32, 1000, beta=0.5, alpha=2.0)
    for mask, t in zip(masks, timesteps, strict=True):
        assert torch.equal(mask, table[t])


def test_dtr_router_serves_every_width_of_an_adm_unet() -> None:

    torch.manual_seed(0)
    arguments = dict(
        image_size=8,
        in_channels=3,
        model_channels=32,
        out_channels=6,
        num_res_blocks=1,
        attention_resolutions=(2,),
        channel_mult=(1, 2),
        num_heads=2,
    )
    plain = ADMUNet(**arguments)
    widths = plain.router_channels()
    assert len(set(widths)) > 1
    router = routing.build("dtr", channels=widths, num_blocks=len(widths), num_tasks=1000, beta=0.5)
    routed = ADMUNet(**arguments, router=router)
    assert list(routed.state_dict()) == list(plain.state_dict())
    assert len(list(router.buffers())) == len(set(widths))
    seen = []
    for module in routed.modules():
        if type(module).__name__ == "ResBlock":
            module.register_forward_pre_hook(lambda module, args: seen.append(args[2]))
    t = torch.tensor([0, 999])
    routed(torch.randn(2, 3, 8, 8), t)
    assert sorted(mask.shape[1] for mask in seen) == sorted(widths)
    for mask in seen:
        assert torch.equal(mask, routing.dtr_table(mask.shape[1], 1000, beta=0.5)[t])
