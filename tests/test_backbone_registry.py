"""Adding a backbone is one class and two decorators: a toy family goes through the whole zoo.

Also: every registry miss (backbones, architectures, routers, balancers, weightings, objectives, model names,
pretrained tags) is one error that is both a KeyError and a ValueError, with a readable message.
"""

from __future__ import annotations

import math

import pytest
import torch
import zoo.clustering.objectives
import zoo.models
import zoo.models.registry
import zoo.mtl.registry
import zoo.routing.registry
from torch import nn

import zoo
import zoo.config


class ToyNet(nn.Module):
    """A small conv net: stem, `depth` residual conv blocks (block i's input times router.mask(t, block=i)),
    a label table with a null row, and an output conv (eps, and the variance value with learn_sigma)."""

    stem_key = "stem"
    head_key = "head"
    label_key = "labels"
    resizable_keys = ()

    def fsdp_units(self) -> list[nn.Module]:
        return list(self.blocks)

    @staticmethod
    def resolve_learn_sigma(kwargs, overrides, defaults) -> bool:
        return bool(kwargs.get("learn_sigma", True))

    def __init__(
        self,
        input_size: int = 8,
        in_channels: int = 1,
        width: int = 16,
        depth: int = 2,
        num_classes: int = 10,
        learn_sigma: bool = True,
        router=None,
    ):
        super().__init__()
        self.input_size, self.in_channels, self.width, self.depth = input_size, in_channels, width, depth
        self.num_classes = num_classes
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.time = nn.Linear(width, width)
        self.labels = nn.Embedding(num_classes + 1, width)  # row num_classes: the null class
        self.blocks = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(depth))
        self.head = nn.Conv2d(width, 2 * in_channels if learn_sigma else in_channels, 3, padding=1)
        self.router = None
        self.set_router(router)

    def router_channels(self) -> list[int]:
        return [self.width] * self.depth

    def set_router(self, router) -> None:
        self._modules.pop("router", None)
        self.__dict__.pop("router", None)
        self.router = router

    def forward(self, x, t, y=None):
        half = self.width // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device) / half)
        angles = t.float()[:, None] * freqs[None]
        emb = self.time(torch.cat([angles.cos(), angles.sin()], dim=1))
        if y is None:
            y = torch.full_like(t, self.num_classes)
        emb = emb + self.labels(y)
        h = self.stem(x)
        for i, block in enumerate(self.blocks):
            inp = h if self.router is None else h * self.router.mask(t, block=i)[:, :, None, None].to(h.dtype)
            h = h + block(torch.nn.functional.silu(inp + emb[:, :, None, None]))
        return self.head(torch.nn.functional.silu(h))


@pytest.fixture
def toy():
    """Register the toy family and backbone; remove them (and the class's arch attribute) afterwards."""
    archs, backbones = zoo.models.registry._ARCHS, zoo.models.registry._BACKBONES
    before = (dict(archs), dict(backbones))
    cls = zoo.models.register_arch("toy")(type("Toy", (ToyNet,), {}))

    @zoo.models.register_backbone("toy_t")
    def _toy_t():
        return {"arch": "toy", "kwargs": {"input_size": 8, "in_channels": 1, "width": 16, "depth": 2}}

    yield cls
    archs.clear()
    archs.update(before[0])
    backbones.clear()
    backbones.update(before[1])


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(10, 1, 8, 8, generator=g), torch.randint(0, 10, (10,), generator=g)


@pytest.mark.parametrize("name", ["toy_t_dtr_nash_k5", "toy_t_uw_k5"])
def test_toy_backbone_trains_saves_and_loads(toy, name, tmp_path):
    torch.manual_seed(0)
    model = zoo.create(name, num_classes=10)
    assert isinstance(model.net, toy) and model.config["backbone"]["arch"] == "toy"
    assert model.clusters.k == 5
    if "dtr" in name:
        assert model.net.router is not None and model.config["routing"]["name"] == "dtr"
        t = torch.tensor([0, 999])
        masks = model.net.router.mask(t, block=0)
        assert masks.shape == (2, 16) and not torch.equal(masks[0], masks[1])  # the window moves with t
    else:
        assert model.net.router is None and model.config["mtl"]["name"] == "uw"

    # one optimiser step changes the weights, driven by the balancer's gradients
    x0, y = _batch()
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimiser = torch.optim.SGD(params, lr=1e-2)
    out = model.loss(x0, y)
    assert out.cluster_losses.shape == (5,) and torch.isfinite(out.total)
    model.backward(out)
    head_grad = model.net.head.weight.grad
    assert head_grad is not None and head_grad.abs().sum() > 0
    optimiser.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, params))

    # save and load: the same outputs and the same balancer state
    model.eval()
    folder = model.save_pretrained(tmp_path / "toy")
    loaded = zoo.create(f"local-dir:{folder}").eval()
    assert isinstance(loaded.net, toy) and loaded.config == model.config
    t = torch.tensor([0, 100, 200, 300, 400, 500, 600, 700, 800, 999])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x0, t, y), model(x0, t, y), rtol=0, atol=0)
    mine, theirs = model.mtl_state_dict(), loaded.mtl_state_dict()
    assert mine.keys() == theirs.keys()
    for key in mine:
        torch.testing.assert_close(theirs[key], mine[key], rtol=0, atol=0)


def test_toy_backbone_is_listed_and_removed(toy):
    names = zoo.list_models("toy_t*")
    assert {"toy_t", "toy_t_dtr", "toy_t_uw_k5", "toy_t_dtr_nash_k5"} <= set(names)
    assert all(n.startswith("toy_t") for n in names)
    assert "toy_t" in zoo.list_backbones() and "toy" in zoo.models.list_archs()


def test_registries_are_clean_without_the_fixture():
    assert "toy_t" not in zoo.models.list_backbones() and "toy" not in zoo.models.list_archs()
    assert zoo.list_models("toy_t*") == []


def test_a_family_missing_a_fact_is_refused():
    for fact in zoo.models.ARCH_FACTS:
        attrs = {f: getattr(ToyNet, f) for f in zoo.models.ARCH_FACTS if f != fact}
        cls = type("Partial", (nn.Module,), attrs)
        with pytest.raises(TypeError, match=fact):
            zoo.models.register_arch("partial")(cls)
        assert "partial" not in zoo.models.list_archs()


# --- one error type for every registry miss -----------------------------------------------------------------

MISSES = {
    "backbone": lambda: zoo.models.backbone_spec("dit_q"),
    "arch": lambda: zoo.models.arch_class("transformer"),
    "router": lambda: zoo.routing.registry.get_router_class("dtrr"),
    "router build": lambda: zoo.routing.build("dtrr", channels=8, num_blocks=2),
    "balancer": lambda: zoo.mtl.build("nashh", 5),
    "weighting": lambda: zoo.mtl.build_weighting("minsnrr"),
    "objective": lambda: zoo.clustering.objectives.get_objective("snrr"),
    "model name": lambda: zoo.parse_name("dit_q_dtr"),
    "model config": lambda: zoo.config_from_name("dit_t_nashh_k5"),
    "zoo backbone": lambda: zoo.config.backbone_spec("dit_q"),
    "pretrained tag": lambda: zoo.get_pretrained_cfg("dit_t.nosuchtag"),
    "create tag": lambda: zoo.create("dit_t.nosuchtag"),
}


@pytest.mark.parametrize("kind", sorted(MISSES))
def test_every_registry_miss_is_a_key_and_value_error(kind):
    with pytest.raises(KeyError) as caught:
        MISSES[kind]()
    error = caught.value
    assert isinstance(error, ValueError), f"{kind}: {type(error).__mro__} is not also a ValueError"
    assert type(error).__name__ in ("UnknownNameError", "UnknownModelError"), type(error)
    message = str(error)
    assert not message.startswith(("'", '"')), f"{kind}: KeyError's quoting in {message!r}"
    assert message.strip(), kind


def test_each_part_defines_the_same_error_shape():
    classes = [
        zoo.models.registry.UnknownNameError,
        zoo.routing.registry.UnknownNameError,
        zoo.mtl.registry.UnknownNameError,
        zoo.clustering.objectives.UnknownNameError,
        zoo.UnknownModelError,
    ]
    for cls in classes:
        assert issubclass(cls, KeyError) and issubclass(cls, ValueError), cls
        assert str(cls("unknown router 'x'")) == "unknown router 'x'"
