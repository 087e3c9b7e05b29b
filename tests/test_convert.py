"""zoo.hub.convert: diffusers <-> DiT parity, the original DiT file formats, DTR mask buffers."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from zoo.models import DiT

import zoo
from zoo.cli import main
from zoo.hub.convert import (
    diffusers_config_from_dit,
    diffusers_to_dit,
    dit_config_from_diffusers,
    dit_to_diffusers,
    export_diffusers,
    load_original_dit_checkpoint,
    set_diffusers_timestep_shift,
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


# ------------------------------------------------------------------------------ zoo convert, both ways


def foreign_dit(seed: int = 0, **config):
    """A diffusers DiT with random weights (shared embedders identical across blocks, as converted)."""
    torch.manual_seed(seed)
    model = diffusers.DiTTransformer2DModel(**{**DIFFUSERS_CONFIG, **config}).eval()
    state = model.state_dict()
    with torch.no_grad():
        for value in state.values():
            value.normal_(0.0, 0.1)
        for key, value in state.items():
            if ".norm1.emb." in key and not key.startswith("transformer_blocks.0."):
                value.copy_(state["transformer_blocks.0." + key.split(".", 2)[2]])
    return model


NON_STANDARD = {  # hidden 128 and depth 4 are DiT-T's, everything else is not the registered DiT-T/2
    "8 heads, patch 4, 7 classes, 12x12": dict(
        num_attention_heads=8,
        attention_head_dim=16,
        num_layers=4,
        patch_size=4,
        num_embeds_ada_norm=7,
        sample_size=12,
    ),
    "2 heads, patch 1, 3 classes, 6x6, 3 channels, fixed sigma": dict(
        num_attention_heads=2,
        attention_head_dim=64,
        num_layers=4,
        patch_size=1,
        num_embeds_ada_norm=3,
        sample_size=6,
        in_channels=3,
        out_channels=3,
    ),
    "unregistered width and depth, --name dit_t": dict(
        num_attention_heads=3,
        attention_head_dim=16,
        num_layers=2,
        patch_size=2,
        num_embeds_ada_norm=5,
        sample_size=4,
    ),
}


@torch.no_grad()
@pytest.mark.parametrize("case", list(NON_STANDARD))
def test_convert_builds_from_the_full_diffusers_config(tmp_path, case):

    theirs = foreign_dit(**NON_STANDARD[case])
    theirs.save_pretrained(tmp_path / "src" / "transformer")
    extra = ["--name", "dit_t"] if "unregistered" in case else []
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "zoo"), *extra]) == 0
    model = zoo.create(f"local-dir:{tmp_path / 'zoo'}").eval()
    config = theirs.config
    kwargs = model.config["backbone"]["kwargs"]
    assert kwargs["num_heads"] == config.num_attention_heads and kwargs["patch_size"] == config.patch_size
    assert kwargs["input_size"] == config.sample_size and model.num_classes == config.num_embeds_ada_norm
    assert kwargs["learn_sigma"] == (config.out_channels == 2 * config.in_channels)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(3, config.in_channels, config.sample_size, config.sample_size, generator=generator)
    t = torch.tensor([0, 321, 999])
    y = torch.tensor([0, config.num_embeds_ada_norm - 1, config.num_embeds_ada_norm])  # last: null class
    expected = theirs(x, timestep=t, class_labels=y).sample
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(model(x, t, y), expected, atol=1e-5, rtol=1e-5)


def test_convert_of_an_unregistered_size_asks_for_a_name(tmp_path, capsys):

    foreign_dit(**NON_STANDARD["unregistered width and depth, --name dit_t"]).save_pretrained(
        tmp_path / "src"
    )
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "zoo")]) == 2
    assert "pass --name BACKBONE" in capsys.readouterr().err


def perturbed(model):
    with torch.no_grad():
        for key, param in model.net.named_parameters():
            if key != "pos_embed":  # fixed sin-cos, recomputed by diffusers
                param.normal_(0.0, 0.1)
    return model.eval()


@torch.no_grad()
def test_export_to_diffusers_loads_with_equal_outputs(tmp_path):

    x, t, y = batch()
    # diffusers' timestep spacing (a model converted from diffusers): equal as loaded
    model = perturbed(
        zoo.create("dit_t", input_size=8, in_channels=4, num_classes=10, timestep_freq_shift=1.0)
    )
    model.save_pretrained(tmp_path / "shift1")
    with pytest.warns(UserWarning, match="null class"):
        assert main(["convert", "--to", "diffusers", str(tmp_path / "shift1"), str(tmp_path / "d1")]) == 0
    loaded = diffusers.DiTTransformer2DModel.from_pretrained(tmp_path / "d1" / "transformer").eval()
    torch.testing.assert_close(loaded(x, t, y).sample, model(x, t, y), atol=1e-5, rtol=1e-5)
    # the original spacing (every model trained here): said so, and equal once the spacing is set
    model = perturbed(zoo.create("dit_t", input_size=8, in_channels=4, num_classes=10))
    model.save_pretrained(tmp_path / "shift0")
    with pytest.warns(UserWarning) as record:
        assert main(["convert", "--to", "diffusers", str(tmp_path / "shift0"), str(tmp_path / "d0")]) == 0
    assert any("set_diffusers_timestep_shift" in str(w.message) for w in record)
    notes = json.loads((tmp_path / "d0" / "conversion.json").read_text())["notes"]
    assert any("downscale_freq_shift=0" in note for note in notes)
    loaded = diffusers.DiTTransformer2DModel.from_pretrained(tmp_path / "d0" / "transformer").eval()
    assert (loaded(x, t, y).sample - model(x, t, y)).abs().max() > 1e-3
    set_diffusers_timestep_shift(loaded, 0)
    torch.testing.assert_close(loaded(x, t, y).sample, model(x, t, y), atol=1e-5, rtol=1e-5)


def test_export_refuses_a_routed_model(tmp_path, capsys):

    routed = perturbed(zoo.create("dit_t_dtr", input_size=8, in_channels=4, num_classes=10))
    with pytest.raises(ValueError, match=r"dit_t_dtr is routed \(dtr.*no routing"):
        export_diffusers(routed, tmp_path / "out")
    with pytest.raises(ValueError, match="is routed"):
        dit_to_diffusers(routed.net)
    assert not (tmp_path / "out").exists()
    routed.save_pretrained(tmp_path / "routed")
    assert main(["convert", "--to", "diffusers", str(tmp_path / "routed"), str(tmp_path / "out2")]) == 2
    assert "is routed" in capsys.readouterr().err
    adm = zoo.create("adm_t")
    with pytest.raises(ValueError, match="only DiT backbones"):
        export_diffusers(adm, tmp_path / "out3")


def tiny_vae(folder):
    """A tiny random AutoencoderKL built here (4 latent channels, no downsampling), saved to folder."""
    torch.manual_seed(3)
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=8,
    )
    vae.save_pretrained(folder)
    return folder


@torch.no_grad()
def test_dit_pipeline_runs_an_exported_latent_model_as_the_zoo_samples_it(tmp_path):

    vae = {"repo": str(tiny_vae(tmp_path / "vae")), "scale": 0.5}
    model = perturbed(zoo.create("dit_t", input_size=8, in_channels=4, num_classes=10, vae=vae))
    with pytest.warns(UserWarning):
        zoo.hub.convert.export_diffusers(model, tmp_path / "pipe")
    pipe = diffusers.DiTPipeline.from_pretrained(tmp_path / "pipe")
    assert pipe.vae.config.scaling_factor == 0.5 and isinstance(pipe.scheduler, diffusers.DDIMScheduler)
    set_diffusers_timestep_shift(pipe.transformer, 0)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        class_labels=[1, 7],
        guidance_scale=1.0,
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    ours = model.sample(labels=[1, 7], steps=4, sampler="ddim", seed=0)  # decoded by the same VAE
    ours = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert images.shape == (2, 8, 8, 3) and images.std() > 0.01
    np.testing.assert_allclose(images, ours, atol=2e-4)
