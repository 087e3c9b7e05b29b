"""Weight converters: foreign DiT formats <-> our `models.DiT` state dict (the original DiT key names).

- diffusers `DiTTransformer2DModel`: fused qkv <-> to_q/to_k/to_v, one shared timestep/label embedder
  <-> per-block copies, `transformer_blocks.*` <-> `blocks.*`.
- the original DiT release (`DiT-XL-2-256x256.pt`: a plain state dict) and its `train.py` checkpoints
  (`{"model", "ema", "opt", "args"}`), opened with `torch.load(weights_only=True)`, never executed.
- DTR-style checkpoints, which store their routing tables as buffers: checked, then dropped.
- SiT's checkpoints (willisma/SiT: the released `SiT-XL-2-256.pt`, `train.py`'s `{"model", "ema", ...}`):
  the DiT key layout, loaded as is.

Pure functions on state dicts; nothing here downloads anything.
"""

from __future__ import annotations

import argparse
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from zoo.models.dit import sincos_pos_embed_2d

# Keys of one block that are renamed one to one (ours -> diffusers), for weight and bias alike.
_BLOCK_RENAMES = {
    "attn.proj": "attn1.to_out.0",
    "mlp.fc1": "ff.net.0.proj",
    "mlp.fc2": "ff.net.2",
    "adaLN_modulation.1": "norm1.linear",
}
# Keys outside the blocks renamed one to one (ours -> diffusers).
_TOP_RENAMES = {
    "x_embedder.proj": "pos_embed.proj",
    "final_layer.adaLN_modulation.1": "proj_out_1",
    "final_layer.linear": "proj_out_2",
}
# The shared embedders: ours -> the per-block copy inside diffusers' norm1.emb.
_EMBEDDER_RENAMES = {
    "t_embedder.mlp.0": "norm1.emb.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "norm1.emb.timestep_embedder.linear_2",
    "y_embedder.embedding_table": "norm1.emb.class_embedder.embedding_table",
}
_PARAMS = ("weight", "bias")
_DIFFUSERS_BLOCK = re.compile(r"transformer_blocks\.(\d+)\.(.+)")


def _depth_of(state_dict: Mapping[str, Tensor], pattern: re.Pattern[str]) -> int:
    indices = {int(m.group(1)) for key in state_dict if (m := pattern.match(key))}
    if not indices:
        raise KeyError(f"no transformer blocks found (keys matching {pattern.pattern!r})")
    if indices != set(range(len(indices))):
        raise KeyError(f"block indices are not contiguous from 0: {sorted(indices)}")
    return len(indices)


def diffusers_to_dit(state_dict: Mapping[str, Tensor], sample_size: int) -> dict[str, Tensor]:
    """A diffusers `DiTTransformer2DModel` state dict -> our DiT state dict.

    sample_size is the latent side (config `sample_size`); it fixes the sin-cos `pos_embed`, which
    diffusers does not store. The per-block copies of the timestep and label embedders must be
    identical (they are in every converted checkpoint); a mismatch raises, naming the key.
    """
    source = dict(state_dict)
    depth = _depth_of(source, _DIFFUSERS_BLOCK)
    out: dict[str, Tensor] = {}

    def take(key: str) -> Tensor:
        if key not in source:
            raise KeyError(f"diffusers state dict lacks {key!r}")
        return source.pop(key)

    for ours, theirs in _TOP_RENAMES.items():
        for param in _PARAMS:
            out[f"{ours}.{param}"] = take(f"{theirs}.{param}")
    for ours, theirs in _EMBEDDER_RENAMES.items():
        for param in _PARAMS if not ours.startswith("y_") else ("weight",):
            first = take(f"transformer_blocks.0.{theirs}.{param}")
            for i in range(1, depth):
                key = f"transformer_blocks.{i}.{theirs}.{param}"
                if not torch.equal(take(key), first):
                    raise ValueError(
                        f"{key} differs from block 0's copy; diffusers' shared embedder is ambiguous"
                    )
            out[f"{ours}.{param}"] = first
    for i in range(depth):
        src, dst = f"transformer_blocks.{i}", f"blocks.{i}"
        for param in _PARAMS:
            out[f"{dst}.attn.qkv.{param}"] = torch.cat(
                [take(f"{src}.attn1.to_{name}.{param}") for name in ("q", "k", "v")], dim=0
            )
            for ours, theirs in _BLOCK_RENAMES.items():
                out[f"{dst}.{ours}.{param}"] = take(f"{src}.{theirs}.{param}")
    if source:
        raise KeyError(f"unexpected diffusers keys left unconverted: {sorted(source)[:8]}")
    hidden = out["x_embedder.proj.weight"].shape[0]
    patch = out["x_embedder.proj.weight"].shape[-1]
    grid = sample_size // patch
    out["pos_embed"] = sincos_pos_embed_2d(hidden, grid).float().unsqueeze(0)
    return out


def dit_to_diffusers(state_dict: Mapping[str, Tensor] | torch.nn.Module) -> dict[str, Tensor]:
    """Our DiT state dict (or the DiT itself) -> a diffusers `DiTTransformer2DModel` state dict.

    The shared embedders are copied into every block (as diffusers expects); `pos_embed` is dropped
    (diffusers recomputes it). Unconditional models have no diffusers counterpart and raise. Given a
    module, a routed one raises (`refuse_routed`): its masks are not weights and diffusers has none.
    """
    if isinstance(state_dict, torch.nn.Module):
        refuse_routed(state_dict)
        state_dict = state_dict.state_dict()
    source = {key: value for key, value in state_dict.items() if key != "pos_embed"}
    if "y_embedder.embedding_table.weight" not in source:
        raise ValueError(
            "diffusers' DiTTransformer2DModel is always class-conditional; this DiT has no y_embedder"
        )
    depth = _depth_of(source, re.compile(r"blocks\.(\d+)\.(.+)"))
    out: dict[str, Tensor] = {}

    def take(key: str) -> Tensor:
        if key not in source:
            raise KeyError(f"DiT state dict lacks {key!r}")
        return source.pop(key)

    for ours, theirs in _TOP_RENAMES.items():
        for param in _PARAMS:
            out[f"{theirs}.{param}"] = take(f"{ours}.{param}")
    embedders = {
        f"{theirs}.{param}": take(f"{ours}.{param}")
        for ours, theirs in _EMBEDDER_RENAMES.items()
        for param in (_PARAMS if not ours.startswith("y_") else ("weight",))
    }
    for i in range(depth):
        src, dst = f"blocks.{i}", f"transformer_blocks.{i}"
        for key, value in embedders.items():
            out[f"{dst}.{key}"] = value.clone()
        for param in _PARAMS:
            q, k, v = take(f"{src}.attn.qkv.{param}").chunk(3, dim=0)
            out[f"{dst}.attn1.to_q.{param}"], out[f"{dst}.attn1.to_k.{param}"] = q, k
            out[f"{dst}.attn1.to_v.{param}"] = v
            for ours, theirs in _BLOCK_RENAMES.items():
                out[f"{dst}.{theirs}.{param}"] = take(f"{src}.{ours}.{param}")
    if source:
        raise KeyError(f"unexpected DiT keys left unconverted: {sorted(source)[:8]}")
    return out


def dit_config_from_diffusers(
    config: Mapping[str, Any], timestep_embedding: str = "diffusers"
) -> dict[str, Any]:
    """A diffusers `DiTTransformer2DModel` config -> `models.DiT` keyword arguments.

    timestep_embedding="diffusers" reproduces diffusers' forward exactly (its sinusoid divides by
    half-1, `timestep_freq_shift=1`); "original" uses the original DiT's spacing, which is what the
    released `facebook/DiT-XL-2-*` weights were trained with (they were converted from it).
    """
    shifts = {"diffusers": 1.0, "original": 0.0}
    if timestep_embedding not in shifts:
        raise ValueError(f"timestep_embedding must be one of {list(shifts)}, got {timestep_embedding!r}")
    expected = {
        "norm_type": "ada_norm_zero",
        "activation_fn": "gelu-approximate",
        "attention_bias": True,
        "norm_elementwise_affine": False,
    }
    for key, value in expected.items():
        if config.get(key, value) != value:
            raise ValueError(f"unsupported diffusers DiT config: {key}={config[key]!r} (expected {value!r})")
    if config.get("dropout", 0.0):
        raise ValueError(f"unsupported diffusers DiT config: dropout={config['dropout']} (expected 0.0)")
    if config.get("norm_eps", 1e-5) != 1e-6:
        warnings.warn(
            f"diffusers norm_eps={config.get('norm_eps', 1e-5)} applies to its MLP LayerNorm; DiT uses 1e-6 "
            "there, so outputs differ by O(eps)",
            UserWarning,
            stacklevel=2,
        )
    in_channels = config.get("in_channels", 4)
    out_channels = config.get("out_channels") or in_channels
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(f"out_channels={out_channels} must be in_channels ({in_channels}) or twice it")
    heads = config.get("num_attention_heads", 16)
    return {
        "input_size": config.get("sample_size", 32),
        "patch_size": config.get("patch_size", 2),
        "in_channels": in_channels,
        "hidden_size": heads * config.get("attention_head_dim", 72),
        "depth": config.get("num_layers", 28),
        "num_heads": heads,
        "mlp_ratio": 4.0,
        "class_dropout_prob": 0.1,  # diffusers always builds the null-class row
        "num_classes": config.get("num_embeds_ada_norm", 1000),
        "learn_sigma": out_channels == 2 * in_channels,
        "timestep_freq_shift": shifts[timestep_embedding],
    }


def diffusers_config_from_dit(config: Mapping[str, Any]) -> dict[str, Any]:
    """`models.DiT` keyword arguments -> a diffusers `DiTTransformer2DModel` config (the inverse map)."""
    if not config.get("num_classes", 1000) or config.get("class_dropout_prob", 0.1) <= 0:
        raise ValueError("diffusers' DiT needs num_classes > 0 and a null-class row (class_dropout_prob > 0)")
    if config.get("mlp_ratio", 4.0) != 4.0:
        raise ValueError(f"diffusers' DiT fixes mlp_ratio=4.0, got {config['mlp_ratio']}")
    hidden, heads = config.get("hidden_size", 1152), config.get("num_heads", 16)
    in_channels = config.get("in_channels", 4)
    return {
        "num_attention_heads": heads,
        "attention_head_dim": hidden // heads,
        "in_channels": in_channels,
        "out_channels": 2 * in_channels if config.get("learn_sigma", True) else in_channels,
        "num_layers": config.get("depth", 28),
        "sample_size": config.get("input_size", 32),
        "patch_size": config.get("patch_size", 2),
        "num_embeds_ada_norm": config.get("num_classes", 1000),
        "norm_eps": 1e-6,
    }


def load_original_dit_checkpoint(path: str | os.PathLike[str], prefer: str = "ema") -> dict[str, Tensor]:
    """State dict from an original DiT file: a plain state dict or a `train.py` checkpoint.

    train.py checkpoints `{"model", "ema", "opt", "args"}` give their `prefer` entry ("ema" by
    default, else "model"). Opened with `torch.load(weights_only=True)`: no pickled code runs; the
    only class allowed besides tensors is `argparse.Namespace`, which train.py stores as "args".
    The released original weights (DiT-XL-2-256x256.pt, -512x512.pt) are licensed CC BY-NC 4.0
    and are not vendored here; users download them themselves.
    """
    if prefer not in ("ema", "model"):
        raise ValueError(f"prefer must be 'ema' or 'model', got {prefer!r}")
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"{path}: expected a state dict or a train.py checkpoint dict, got {type(checkpoint).__name__}"
        )
    if any(key in checkpoint for key in ("ema", "model")):
        other = "model" if prefer == "ema" else "ema"
        state_dict = checkpoint.get(prefer, checkpoint.get(other))
    else:
        state_dict = checkpoint
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise ValueError(f"{path}: the selected entry is not a state dict of tensors")
    return dict(state_dict)


#: the key prefixes of SiT's models.py (`SiT`): those of the original DiT, one to one
SIT_PREFIXES = ("x_embedder.", "t_embedder.", "y_embedder.", "pos_embed", "blocks.", "final_layer.")


def load_sit_checkpoint(path: str | os.PathLike[str], prefer: str = "ema") -> dict[str, Tensor]:
    """State dict from a SiT file (willisma/SiT): the released `SiT-XL-2-256.pt` (a plain state dict) or a
    `train.py` checkpoint `{"model", "ema", "opt", "args"}` (its `prefer` entry, "ema" by default, as SiT's
    `find_model` reads it). SiT's network is DiT's with the same key names, so the keys pass unchanged;
    a key outside that layout is an error. Opened with `torch.load(weights_only=True)`.
    """
    state_dict = load_original_dit_checkpoint(path, prefer=prefer)
    foreign = sorted(key for key in state_dict if not key.startswith(SIT_PREFIXES))
    if foreign:
        raise ValueError(
            f"{path}: not a SiT checkpoint (keys outside SiT's models.py layout {SIT_PREFIXES}): {foreign[:5]}"
        )
    return state_dict


def _is_mask_buffer(key: str) -> bool:
    leaf = key.rsplit(".", 1)[-1]
    return leaf == "_unit_mapping" or "mask" in leaf


def strip_dtr_mask_buffers(
    state_dict: Mapping[str, Tensor], expected_tables: Tensor | Sequence[Tensor] | None = None
) -> dict[str, Tensor]:
    """Drop the routing tables a DTR-style checkpoint stores as buffers; our masks come from config.

    DTR's released code keeps a (num_tasks, channels) 0/1 table per block at
    `blocks.{i}.routing._unit_mapping`; keys whose last part contains "mask" are treated alike.
    With expected_tables (one table for every block, or one per block index) each stored table must
    equal ours exactly, else ValueError naming the key: loading would silently change the routing.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not _is_mask_buffer(key):
            out[key] = value
            continue
        if expected_tables is None:
            continue
        if isinstance(expected_tables, Tensor):
            expected = expected_tables
        else:
            match = re.search(r"blocks\.(\d+)\.", key)
            if match is None or int(match.group(1)) >= len(expected_tables):
                raise ValueError(
                    f"{key}: no expected table for this key ({len(expected_tables)} tables given)"
                )
            expected = expected_tables[int(match.group(1))]
        if value.shape != expected.shape or not torch.equal(value.float(), expected.float().to(value.device)):
            differing = "shape" if value.shape != expected.shape else "values"
            raise ValueError(
                f"{key}: stored routing table differs from ours in {differing} "
                f"(stored {tuple(value.shape)}, expected {tuple(expected.shape)})"
            )
    return out


# ------------------------------------------------------------------------------ export to diffusers


def refuse_routed(model: Any) -> None:
    """Raise for a routed model (a DiffusionModel or a net): routing is no part of diffusers' DiT."""
    config = getattr(model, "config", None)
    routing = config.get("routing") if isinstance(config, Mapping) else None
    net = getattr(model, "net", model)
    if routing or getattr(net, "router", None) is not None:
        name = (
            config.get("name") if isinstance(config, Mapping) and "name" in config else type(model).__name__
        )
        kind = (routing or {}).get("name") or type(getattr(net, "router", None)).__name__
        raise ValueError(
            f"{name} is routed ({kind}: each block's input is masked by timestep); diffusers' "
            "DiTTransformer2DModel has no routing, so its outputs would silently differ. Only unrouted DiTs "
            "export to diffusers; keep routed models in the zoo layout (save_pretrained / zoo.create)"
        )


def set_diffusers_timestep_shift(transformer: Any, shift: float) -> Any:
    """Set the sinusoid spacing of a diffusers `DiTTransformer2DModel` in place: `downscale_freq_shift`
    of every block's timestep projection (diffusers builds 1; 0 is the original DiT's, which the
    facebook/DiT-XL-2-* weights and every model trained here use). Returns the transformer."""
    count = 0
    for module in transformer.modules():
        if type(module).__name__ == "Timesteps" and hasattr(module, "downscale_freq_shift"):
            module.downscale_freq_shift = float(shift)
            count += 1
    if not count:
        raise ValueError(f"{type(transformer).__name__} has no diffusers Timesteps projection to set")
    return transformer


def diffusers_scheduler_config(diffusion: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers DDIMScheduler config with the betas of a zoo diffusion config (linear or cosine)."""
    steps = int(diffusion.get("num_timesteps", 1000))
    schedule = diffusion.get("schedule", "linear")
    if schedule == "linear":
        scale = 1000.0 / steps
        betas = {"beta_schedule": "linear", "beta_start": scale * 1e-4, "beta_end": scale * 0.02}
    elif schedule == "cosine":
        betas = {"beta_schedule": "squaredcos_cap_v2"}
    else:
        raise ValueError(f"no diffusers beta schedule for {schedule!r}")
    return {"num_train_timesteps": steps, **betas, "clip_sample": False, "set_alpha_to_one": True}


def export_diffusers(model: Any, directory: str | os.PathLike[str], vae: Any = "auto") -> dict[str, Any]:
    """Write a zoo DiT as a diffusers folder: `transformer/` (DiTTransformer2DModel), `scheduler/`
    (DDIMScheduler with the model's betas), `vae/` for latent models and `model_index.json`, so that
    `DiTPipeline.from_pretrained(directory)` runs it.

    `vae`: "auto" (the model's VAE, `config["vae"]["repo"]`, from the cache or the Hub), a folder or
    repo of an `AutoencoderKL`, an `AutoencoderKL`, or None (no vae/ folder; pass `vae=` to
    `DiTPipeline.from_pretrained`). Its `scaling_factor` is set to the model's latent scale.

    Refuses routed models, ADM U-Nets, unconditional DiTs and DiTs without a null class. diffusers'
    DiT spaces the timestep frequencies by half-1; a model with the original spacing (every model
    trained here) exports with a warning and a note in `conversion.json`: call
    `set_diffusers_timestep_shift(pipe.transformer, 0)` after loading for equal outputs.
    Returns what `conversion.json` records.
    """
    try:
        import diffusers
    except ImportError as exc:
        raise ImportError(
            "exporting to diffusers needs diffusers: pip install 'dit-mtl-zoo[diffusers]'"
        ) from exc
    import json
    from pathlib import Path

    if model.config["backbone"]["arch"] != "dit":
        raise ValueError(
            f"{model.config['name']}: only DiT backbones have a diffusers counterpart "
            f"(DiTTransformer2DModel), not {model.config['backbone']['arch']!r}"
        )
    refuse_routed(model)
    kwargs = model.net.config
    config = diffusers_config_from_dit(kwargs)
    shift = float(kwargs.get("timestep_freq_shift", 0.0))
    if shift not in (0.0, 1.0):
        raise ValueError(f"timestep_freq_shift={shift}: diffusers' Timesteps supports 0 or 1 only")
    grid = int(kwargs["input_size"]) // int(kwargs["patch_size"])
    fixed = sincos_pos_embed_2d(int(kwargs["hidden_size"]), grid).float().unsqueeze(0)
    if not torch.allclose(model.net.pos_embed.detach().cpu().float(), fixed, atol=1e-6):
        raise ValueError(
            f"{model.config['name']}: pos_embed is not the fixed 2-D sin-cos embedding, which diffusers "
            "recomputes instead of loading: the export would change the outputs"
        )
    transformer = diffusers.DiTTransformer2DModel(**config)
    transformer.load_state_dict(dit_to_diffusers(model.net), strict=True)
    transformer.eval()
    scheduler = diffusers.DDIMScheduler(**diffusers_scheduler_config(model.config["diffusion"]))
    vae_cfg = model.config.get("vae")
    if isinstance(vae, str) and vae == "auto":
        vae = vae_cfg.get("repo") if vae_cfg else None
    if isinstance(vae, (str, os.PathLike)):
        subfolder = vae_cfg.get("subfolder") if vae_cfg and str(vae) == vae_cfg.get("repo") else None
        vae = diffusers.AutoencoderKL.from_pretrained(str(vae), subfolder=subfolder)
    if vae is not None:
        scale = float((vae_cfg or {}).get("scale", vae.config.scaling_factor))
        vae.register_to_config(scaling_factor=scale)
    pipe = diffusers.DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler)
    out = Path(directory)
    pipe.save_pretrained(out, safe_serialization=True)
    notes = []
    if shift == 0.0:
        notes.append(
            "the model uses the original DiT timestep spacing (downscale_freq_shift=0); diffusers builds 1: "
            "call zoo.hub.convert.set_diffusers_timestep_shift(pipe.transformer, 0) after loading for equal outputs"
        )
    if kwargs.get("num_classes") != 1000:
        notes.append(
            f"DiTPipeline takes class 1000 as the null class of guidance; this model's null class is "
            f"{kwargs.get('num_classes')}: run it with guidance_scale <= 1"
        )
    if vae is None and vae_cfg:
        notes.append(
            "no vae/ folder: pass vae=AutoencoderKL.from_pretrained(...) to DiTPipeline.from_pretrained"
        )
    record = {
        "source": model.config["name"],
        "format": "diffusers",
        "timestep_freq_shift": shift,
        "notes": notes,
    }
    (out / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    return record
