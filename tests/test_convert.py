"""zoo.convert: diffusers <-> DiT parity, the original DiT file formats, DTR mask buffers."""

from __future__ import annotations

import argparse

import pytest
import torch

from models import DiT
from zoo.convert import (
    diffusers_config_from_dit,
    diffusers_to_dit,
    dit_config_from_diffusers,
    dit_to_diffusers,
    load_original_dit_checkpoint,
    strip_dtr_mask_buffers,
)

diffusers = pytest.importorskip("diffusers")

DIFFUSERS_CONFIG = {
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": 4,
    "out_channels": 8,
    "num_layers": 3,
    "sample_size": 8,
    "patch_size": 2,
    "num_embeds_ada_norm": 10,
    "norm_eps": 1e-6,
}
OURS = {"input_size": 8, "patch_size": 2, "in_channels": 4, "hidden_size": 32, "depth": 3, "num_heads": 2}


def random_diffusers_dit(seed: int = 0):
    """A diffusers DiT with every weight random (its zero-initialised layers too) and shared embedders."""
    torch.manual_seed(seed)
    model = diffusers.DiTTransformer2DModel(**DIFFUSERS_CONFIG).eval()
    state = model.state_dict()
    with torch.no_grad():
        for value in state.values():
            value.normal_(0.0, 0.2)
        for key, value in state.items():  # diffusers keeps one copy of the embedders per block
            if ".norm1.emb." in key and not key.startswith("transformer_blocks.0."):
                value.copy_(state["transformer_blocks.0." + key.split(".", 2)[2]])
    return model


def random_dit(seed: int = 0, **overrides) -> DiT:
    torch.manual_seed(seed)
    net = DiT(**{**OURS, "num_classes": 10, **overrides}).eval()
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name != "pos_embed":
                param.normal_(0.0, 0.2)
    return net


def batch(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 4, 8, 8, generator=generator)
    t = torch.tensor([0, 3, 500, 999])
    y = torch.tensor([1, 10, 7, 0])  # 10 is the null class
    return x, t, y


@torch.no_grad()
def test_diffusers_to_dit_reproduces_diffusers_outputs():
    reference = random_diffusers_dit()
    config = dit_config_from_diffusers(reference.config)
    assert config["hidden_size"] == 32 and config["learn_sigma"] and config["num_classes"] == 10
    net = DiT(**config).eval()
    net.load_state_dict(diffusers_to_dit(reference.state_dict(), sample_size=8))
    x, t, y = batch()
    expected = reference(x, t, y).sample
    assert expected.shape == (4, 8, 8, 8) and expected.abs().max() > 0.1
    torch.testing.assert_close(net(x, t, y), expected, atol=1e-5, rtol=1e-5)  # all 8 channels


@torch.no_grad()
def test_original_timestep_spacing_differs_from_diffusers():
    reference = random_diffusers_dit()
    config = dit_config_from_diffusers(reference.config, timestep_embedding="original")
    assert config["timestep_freq_shift"] == 0.0
    net = DiT(**config).eval()
    net.load_state_dict(diffusers_to_dit(reference.state_dict(), sample_size=8))
    x, t, y = batch()
    assert (net(x, t, y) - reference(x, t, y).sample).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"\['diffusers', 'original'\]"):
        dit_config_from_diffusers(reference.config, timestep_embedding="ddpm")


@torch.no_grad()
def test_dit_to_diffusers_reproduces_our_outputs_and_round_trips():
    net = random_dit(timestep_freq_shift=1.0)
    config = diffusers_config_from_dit(net.config)
    model = diffusers.DiTTransformer2DModel(**config).eval()
    converted = dit_to_diffusers(net.state_dict())
    model.load_state_dict(converted, strict=True)
    x, t, y = batch()
    torch.testing.assert_close(model(x, t, y).sample, net(x, t, y), atol=1e-5, rtol=1e-5)
    back = diffusers_to_dit(converted, sample_size=8)
    original = net.state_dict()
    assert set(back) == set(original)
    for key, value in original.items():
        torch.testing.assert_close(back[key], value, atol=0, rtol=0, msg=key)


def test_diverging_per_block_embedders_are_rejected():
    state = random_diffusers_dit().state_dict()
    key = "transformer_blocks.2.norm1.emb.class_embedder.embedding_table.weight"
    state[key] = state[key] + 1.0
    with pytest.raises(ValueError, match=f"{key} differs from block 0"):
        diffusers_to_dit(state, sample_size=8)


def test_converters_reject_what_they_cannot_represent():
    with pytest.raises(ValueError, match="always class-conditional"):
        dit_to_diffusers(random_dit(num_classes=0).state_dict())
    with pytest.raises(ValueError, match=r"activation_fn='geglu' \(expected 'gelu-approximate'\)"):
        dit_config_from_diffusers({**DIFFUSERS_CONFIG, "activation_fn": "geglu"})
    with pytest.raises(ValueError, match="out_channels=5"):
        dit_config_from_diffusers({**DIFFUSERS_CONFIG, "out_channels": 5})
    with pytest.warns(UserWarning, match="norm_eps=1e-05"):
        dit_config_from_diffusers({**DIFFUSERS_CONFIG, "norm_eps": 1e-5})
    state = random_diffusers_dit().state_dict()
    state["transformer_blocks.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="transformer_blocks.0.extra.weight"):
        diffusers_to_dit(state, sample_size=8)


@torch.no_grad()
@pytest.mark.parametrize("layout", ["plain", "train.py"])
def test_original_dit_files_load(tmp_path, layout):
    ema, raw = random_dit(seed=3), random_dit(seed=4)
    path = tmp_path / "DiT-T-2.pt"
    if layout == "plain":
        torch.save(ema.state_dict(), path)
    else:  # train.py: {"model", "ema", "opt", "args"}, args an argparse.Namespace
        optimizer = torch.optim.AdamW(raw.parameters(), lr=1e-4)
        torch.save(
            {
                "model": raw.state_dict(),
                "ema": ema.state_dict(),
                "opt": optimizer.state_dict(),
                "args": argparse.Namespace(model="DiT-T/2", image_size=64),
            },
            path,
        )
    loaded = DiT(**OURS, num_classes=10).eval()
    loaded.load_state_dict(load_original_dit_checkpoint(path), strict=True)
    x, t, y = batch()
    torch.testing.assert_close(loaded(x, t, y), ema(x, t, y), atol=0, rtol=0)
    if layout == "train.py":
        model_weights = load_original_dit_checkpoint(path, prefer="model")
        torch.testing.assert_close(model_weights["blocks.0.attn.qkv.weight"], raw.blocks[0].attn.qkv.weight)


def test_loader_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(1)}, "hook": print}, path)
    with pytest.raises(Exception, match="Weights only load failed"):
        load_original_dit_checkpoint(path)


def dtr_state_dict(net: DiT, tables: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a DTR-style checkpoint looks like: our keys plus a routing table buffer per block."""
    state = dict(net.state_dict())
    for i, table in enumerate(tables):
        state[f"blocks.{i}.routing._unit_mapping"] = table.clone()
    return state


def test_strip_dtr_mask_buffers_checks_then_drops_the_tables():
    net = random_dit()
    tables = [(torch.rand(1000, 32) < 0.8).float() for _ in range(3)]
    state = dtr_state_dict(net, tables)
    for expected in (None, tables):
        assert set(strip_dtr_mask_buffers(state, expected)) == set(net.state_dict())
    DiT(**OURS, num_classes=10).load_state_dict(strip_dtr_mask_buffers(state, tables), strict=True)
    shared = dtr_state_dict(net, [tables[0]] * 3)
    assert set(strip_dtr_mask_buffers(shared, tables[0])) == set(net.state_dict())
    wrong = [tables[0], tables[1].flip(0), tables[2]]
    with pytest.raises(
        ValueError, match=r"blocks\.1\.routing\._unit_mapping: .* differs from ours in values"
    ):
        strip_dtr_mask_buffers(state, wrong)
    with pytest.raises(ValueError, match="differs from ours in shape"):
        strip_dtr_mask_buffers(state, torch.ones(1000, 16))
