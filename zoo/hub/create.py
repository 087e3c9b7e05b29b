"""`create`: a name (and maybe a tag or other weights) -> a model with its weights, as timm's
`create_model`; resolution of weight configs (local file -> Hub -> URL) and the adaptation of
pretrained weights to other channel / class counts.

Resolution order for a weight config: its local `file`, then the Hub (`hf_hub_download`, which
respects the cache and HF_HUB_OFFLINE), then its `url` (cached download). Every file with a known
sha256 is checked before it is loaded; a corrupt or truncated file is an error naming the file and
both hashes and is never loaded. Foreign formats (the original DiT `.pt`, diffusers'
`DiTTransformer2DModel`, the ANT/DTR training checkpoints) are opened only by converters
(`zoo.hub.convert`), with `torch.load(weights_only=True)`: pickles are never executed.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch

from zoo.config import arch_class, config_from_name
from zoo.hub import convert
from zoo.hub.pretrained import PretrainedCfg
from zoo.hub.registry import get_pretrained_cfg
from zoo.hub.shipped import PACKAGE_WEIGHTS
from zoo.layout import (
    CONFIG_NAME,
    MTL_WEIGHTS_NAME,
    WEIGHTS_NAME,
    CorruptWeightsError,
    download_url,
    fetch_mtl_file,
    hub_download,
    load_folder,
    load_safetensors,
    read_config,
    verify_sha256,
)
from zoo.model import DiffusionModel, check_warm_start
from zoo.registry import UnknownModelError, is_location, parse_name
from zoo.validate import check_recipe


def resolve_file(cfg: PretrainedCfg) -> Path:
    """Local file, then Hub, then URL; each checked against cfg.sha256."""
    errors = []
    if cfg.file:
        path = Path(cfg.file).expanduser()
        if not path.is_absolute():
            path = PACKAGE_WEIGHTS / path
        if path.exists():
            if path.is_file():
                verify_sha256(path, cfg.sha256)
            return path
        errors.append(f"file {path} does not exist")
    if cfg.hf_hub_id:
        filename = cfg.hf_filename or WEIGHTS_NAME
        try:
            path = hub_download(cfg.hf_hub_id, filename, subfolder=cfg.hf_subfolder, revision=cfg.hf_revision)
            verify_sha256(path, cfg.sha256)
            return path
        except CorruptWeightsError:
            raise
        except Exception as exc:  # offline, missing, network: fall through to the URL, report all
            errors.append(f"hub {cfg.hf_hub_id}/{filename}: {type(exc).__name__}: {exc}")
    if cfg.url:
        try:
            return download_url(cfg.url, cfg.sha256)
        except CorruptWeightsError:
            raise
        except Exception as exc:
            errors.append(f"url {cfg.url}: {type(exc).__name__}: {exc}")
    raise FileNotFoundError(
        f"could not fetch weights for {cfg.name}: " + "; ".join(errors or ["no source configured"])
    )


def hub_folder(repo_id: str, revision: str | None = None) -> Path:
    config = hub_download(repo_id, CONFIG_NAME, revision=revision)
    hub_download(repo_id, WEIGHTS_NAME, revision=revision)
    return config.parent


# ------------------------------------------------------------------------------ create


def _state_dict_from_source(cfg: PretrainedCfg) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Fetch and convert the weights of a config; returns (our state dict, the zoo config if any)."""
    path = resolve_file(cfg)
    if cfg.format == "zoo":
        if path.is_dir():
            config = read_config(path)
            verify_sha256(path / WEIGHTS_NAME, cfg.sha256)
            return load_folder(path, config), config
        return load_safetensors(path), None
    if cfg.format == "diffusers":
        size = int(cfg.overrides.get("input_size", 32))
        if path.suffix == ".safetensors":
            return convert.diffusers_to_dit(load_safetensors(path), size), None
        return convert.diffusers_to_dit(torch.load(path, map_location="cpu", weights_only=True), size), None
    if cfg.format in ("dit_original", "ant"):
        return convert.load_original_dit_checkpoint(path), None
    if cfg.format == "adm":  # guided-diffusion checkpoints: a plain state dict with our key names
        return torch.load(path, map_location="cpu", weights_only=True), None
    if cfg.format == "dtr":
        return convert.strip_dtr_mask_buffers(convert.load_original_dit_checkpoint(path)), None
    if cfg.format == "sit":
        return convert.load_sit_checkpoint(path), None
    raise ValueError(
        f"{cfg.name}: unknown weights format {cfg.format!r} (zoo, diffusers, dit_original, ant, dtr, adm, sit)"
    )


def _location_config(spec: str) -> tuple[dict[str, Any], Path]:
    """`local-dir:PATH`, `hf-hub:org/name[@rev]` or a folder path -> (config, folder)."""
    folder = _location_folder(spec)
    return read_config(folder), folder


def _location_folder(spec: str) -> Path:
    """`local-dir:PATH`, `hf-hub:org/name[@rev]` (downloaded) or a folder path -> the folder."""
    if spec.startswith("local-dir:"):
        if not spec[len("local-dir:") :]:
            raise ValueError("local-dir: needs a folder, e.g. local-dir:path/to/weights")
        folder = Path(spec[len("local-dir:") :]).expanduser()
    elif spec.startswith("hf-hub:"):
        repo, _, revision = spec[len("hf-hub:") :].partition("@")
        folder = hub_folder(repo, revision or None)
    else:
        folder = Path(spec).expanduser()
    return folder


def _path_hint(value: Any) -> str:
    """A hint for a registry miss whose text also names a file or folder here."""
    if isinstance(value, str) and value and Path(value).exists():
        return f" ({value!r} is read as a registry name; to load the file or folder of that name write ./{value} or local-dir:{value})"
    return ""


def create(
    name: str,
    pretrained: bool | str | Path | dict = False,
    *,
    strict: bool = True,
    interpolate_pos_embed: bool = False,
    checkpoint_path: str | Path | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    **overrides: Any,
):
    """Build a model by name (timm style) and optionally load weights.

    `name` is a grammar name (`dit_l_dtr_nash_k5`, `dit_xl.in1k_256`), `local-dir:PATH` or
    `hf-hub:org/name`. `pretrained` is False, True (the default tag, or the name's tag), a tag,
    another `arch.tag` (e.g. plain weights into a routed/MTL recipe), a path, `local-dir:`,
    `hf-hub:`, or an in-memory state dict. Overrides change architecture or recipe settings; an
    `in_channels` or `num_classes` other than the weights' adapts the stem and the label table on load
    (`adapt_pretrained_state_dict`, with a warning), as timm does.

    timm's habits: `checkpoint_path=FILE` loads a checkpoint (safetensors, a `.pt` state dict or
    train.py / trainer checkpoint, a zoo folder) after the model is built, strictly and without
    adaptation; `pretrained_cfg_overlay=dict(file=PATH)` changes fields of the registered weight config
    (e.g. where its file lives); `model.pretrained_cfg` is the weight config as a dict.
    """
    if pretrained_cfg_overlay is not None:
        pretrained_cfg_overlay = _check_overlay(pretrained_cfg_overlay)
    if is_location(name):
        if overrides:
            raise TypeError(f"overrides {sorted(overrides)} cannot change a model loaded from {name}")
        folder = _location_folder(str(name))
        model = DiffusionModel.from_folder(
            folder, strict=strict, source=str(name), mtl_file=_mtl_file(str(name), folder)
        )
        if checkpoint_path is not None:
            load_checkpoint(model, checkpoint_path, strict=strict, interpolate=interpolate_pos_embed)
        return model

    try:
        parsed = parse_name(name)
        if parsed.tag:
            get_pretrained_cfg(parsed.full_name)  # an unknown tag is an error, whatever `pretrained` says
    except UnknownModelError as exc:
        hint = _path_hint(name)
        if hint:
            raise UnknownModelError(f"{exc}{hint}") from None
        raise
    state_dict: dict[str, torch.Tensor] | None = None
    source_config: dict[str, Any] | None = None
    source = None
    cfg: PretrainedCfg | None = None

    def lookup(key: str) -> PretrainedCfg:
        found = get_pretrained_cfg(key)
        return _apply_overlay(found, pretrained_cfg_overlay) if pretrained_cfg_overlay else found

    if pretrained is False and parsed.tag:  # timm semantics: the tag fixes the settings, not the weights
        cfg = lookup(parsed.full_name)
        overrides = {**cfg.overrides, **_vae_override(cfg), **overrides}
    elif pretrained is True:
        cfg = lookup(parsed.full_name if parsed.tag else parsed.arch_name)
        state_dict, source_config, source = *_state_dict_from_source(cfg), cfg.name
        overrides = {**cfg.overrides, **_vae_override(cfg), **overrides}
    elif isinstance(pretrained, dict):
        state_dict, source = pretrained, "state dict"
    elif pretrained:
        spec = str(pretrained)
        if is_location(pretrained):
            if spec.endswith(".safetensors") and Path(spec).is_file():
                state_dict = load_safetensors(spec)
            elif spec.endswith((".pt", ".pth", ".bin")) and Path(spec).is_file():
                state_dict = convert.load_original_dit_checkpoint(spec)
            else:
                source_config, folder = _location_config(spec)
                state_dict = load_folder(folder, source_config)
            source = spec
        else:  # a tag of this arch, or another arch.tag (finetuning plain weights into a recipe)
            key = spec if "." in spec else f"{parsed.arch_name}.{spec}"
            try:
                cfg = lookup(key)
            except UnknownModelError:
                try:
                    cfg = lookup(f"{parsed.backbone}.{spec}") if "." not in spec else lookup(spec)
                except UnknownModelError as exc:
                    raise UnknownModelError(f"pretrained={spec!r}: {exc}{_path_hint(spec)}") from None
            state_dict, source_config, source = *_state_dict_from_source(cfg), cfg.name
            overrides = {**cfg.overrides, **_vae_override(cfg), **overrides}
    source_kwargs = None
    if source_config is not None:
        source_kwargs = _backbone_overrides_from(source_config, parsed.backbone)
        overrides = {**source_kwargs, **overrides}
    elif cfg is not None:
        source_kwargs = _weights_kwargs(cfg)
    check_recipe(parsed, overrides)
    model = DiffusionModel.from_name(parsed, **overrides)
    if cfg is None and not parsed.tag and pretrained is False:
        try:  # timm: an untagged name carries its default tag's config (weights not loaded)
            cfg = get_pretrained_cfg(parsed.arch_name)
        except UnknownModelError:
            cfg = None
    if cfg is not None:
        model.pretrained_cfg = pretrained_cfg_dict(cfg, model)
    elif source is not None:
        model.pretrained_cfg = {"architecture": parsed.arch_name, "source": source}
    if state_dict is not None:
        state_dict = adapt_pretrained_state_dict(
            model, state_dict, source=source, source_kwargs=source_kwargs
        )
        model.load_net_state(state_dict, strict=strict, source=source, interpolate=interpolate_pos_embed)
        check_warm_start(model, _source_routing(source_config, source, pretrained), source)
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path, strict=strict, interpolate=interpolate_pos_embed)
    return model


# ------------------------------------------------------------------------------ timm's habits


def is_model(name: str) -> bool:
    """Whether `name` is a model of the zoo's grammar (timm's `is_model`: a tag is not checked)."""
    try:
        parse_name(name)
    except (UnknownModelError, ValueError, TypeError):
        return False
    return True


_OVERLAY_FIELDS = {f for f in PretrainedCfg.__dataclass_fields__ if f not in ("arch", "tag")}


def _check_overlay(overlay: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(overlay, dict):
        raise TypeError(f"pretrained_cfg_overlay must be a dict, got {type(overlay).__name__}")
    unknown = sorted(set(overlay) - _OVERLAY_FIELDS)
    if unknown:
        raise TypeError(
            f"pretrained_cfg_overlay: unknown field(s) {unknown}; valid: {sorted(_OVERLAY_FIELDS)}"
        )
    overlay = dict(overlay)
    if overlay.get("file") is not None:  # a user's path is relative to the working directory, as in timm
        path = Path(overlay["file"]).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"pretrained_cfg_overlay file {path} does not exist")
        overlay["file"] = str(path.resolve())
    return overlay


def _apply_overlay(cfg: PretrainedCfg, overlay: dict[str, Any]) -> PretrainedCfg:
    """The weight config with the overlay's fields (timm's `pretrained_cfg_overlay`).

    A `file` overlay is looked up before the Hub and the URL and is still checked against the
    config's sha256 (it is meant to be the same weights, stored elsewhere): pass `sha256=None` for
    other weights. A `.pt` / `.pth` file for a diffusers-format config is read as an original DiT file.
    """
    changes = dict(overlay)
    if (
        changes.get("file")
        and "format" not in changes
        and cfg.format == "diffusers"
        and Path(changes["file"]).suffix in (".pt", ".pth")
    ):
        changes["format"] = "dit_original"
    return dataclasses.replace(cfg, **changes)


def _backbone_keys(arch: str) -> dict[str, str]:
    """State-dict names of the stem conv, the output layer and the label table of a backbone (its facts)."""
    cls = arch_class(arch)
    return {"stem": cls.stem_key, "head": cls.head_key, "labels": cls.label_key}


def _weights_kwargs(cfg: PretrainedCfg) -> dict[str, Any] | None:
    """Backbone settings of registered weights (their recipe's defaults with the cfg's overrides)."""
    try:
        overrides = {k: v for k, v in cfg.overrides.items()}
        return dict(config_from_name(cfg.arch, **overrides)["backbone"]["kwargs"])
    except (UnknownModelError, TypeError, ValueError):
        return None


def pretrained_cfg_dict(cfg: PretrainedCfg, model) -> dict[str, Any]:
    """timm-style `pretrained_cfg`: the weight config as a dict, with architecture, the weights'
    input_size (C, H, W) and num_classes, and the names of the first conv and the label table."""
    out = dataclasses.asdict(cfg)
    keys = _backbone_keys(model.config["backbone"]["arch"])
    kwargs = _weights_kwargs(cfg) or model.config["backbone"]["kwargs"]
    size = kwargs.get("input_size", kwargs.get("image_size"))
    out.update(
        architecture=cfg.arch,
        name=cfg.name,
        input_size=(int(kwargs["in_channels"]), int(size), int(size)),
        num_classes=int(kwargs.get("num_classes", 0) or 0),
        first_conv=keys["stem"],
        classifier=keys["labels"],
    )
    return out


def adapt_input_conv(in_chans: int, weight: torch.Tensor, base_chans: int) -> torch.Tensor:
    """timm's `adapt_input_conv` for a stem conv trained on `base_chans` channels: one channel sums the
    source channels; more repeat them cyclically, truncate to `in_chans` and scale by base/in_chans."""
    if in_chans < 1 or base_chans < 1:
        raise ValueError(f"channel counts must be positive, got in_chans={in_chans}, base_chans={base_chans}")
    if weight.ndim != 4 or weight.shape[1] != base_chans:
        raise ValueError(f"expected a conv weight (O, {base_chans}, kH, kW), got {tuple(weight.shape)}")
    if in_chans == base_chans:
        return weight
    dtype, weight = weight.dtype, weight.float()
    if in_chans == 1:
        weight = weight.sum(dim=1, keepdim=True)
    else:
        repeat = -(-in_chans // base_chans)
        weight = weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (base_chans / float(in_chans))
    return weight.to(dtype)


def adapt_pretrained_state_dict(
    model,
    state_dict: dict[str, torch.Tensor],
    source: str | None = None,
    source_kwargs: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Fit pretrained weights to a model with other `in_channels` / `num_classes`, as timm does, warning.

    - in_channels: the stem conv by `adapt_input_conv`; the output layer, whose width is the channel
      count (times 2 with learned sigma), keeps the model's own (zero) initialisation.
    - num_classes: the label table keeps the first min(old, new) class rows, new classes keep their
      initialisation, and the null (classifier-free guidance) row stays the null row, now at index
      num_classes. Whether the weights have a null row comes from their config (`source_kwargs`), else
      it is assumed to match the model's.
    """
    net = model.net
    own = net.state_dict()
    out = dict(state_dict)
    keys = _backbone_keys(model.config["backbone"]["arch"])
    stem = keys["stem"] + ".weight"
    if stem in out and stem in own and out[stem].shape != own[stem].shape:
        old, new = out[stem], own[stem]
        if old.ndim == 4 and old.shape[0] == new.shape[0] and old.shape[2:] == new.shape[2:]:
            out[stem] = adapt_input_conv(new.shape[1], old, base_chans=old.shape[1])
            changed = []
            for param in ("weight", "bias"):
                key = f"{keys['head']}.{param}"
                if key in out and key in own and out[key].shape != own[key].shape:
                    out[key] = own[key].detach().clone()
                    changed.append(key)
            warnings.warn(
                f"{source}: adapted the stem {keys['stem']} from {old.shape[1]} to {new.shape[1]} input "
                f"channel(s) (timm's adapt_input_conv); {', '.join(changed) or 'the output layer'} "
                "starts from this model's initialisation",
                stacklevel=3,
            )
    table = keys["labels"] + ".weight"
    if table in out and table in own and out[table].shape != own[table].shape:
        old, new = out[table], own[table].detach().clone()
        if old.shape[1:] == new.shape[1:]:
            new_classes = int(getattr(net, "num_classes", 0) or 0)
            new_null = new.shape[0] - new_classes
            if source_kwargs and source_kwargs.get("num_classes") is not None:
                old_classes = int(source_kwargs["num_classes"])
                old_null = old.shape[0] - old_classes
            else:
                old_null = new_null
                old_classes = old.shape[0] - old_null
            if old_null in (0, 1) and old_classes >= 0:
                kept = min(old_classes, new_classes)
                new[:kept] = old[:kept].to(new.dtype)
                if new_null and old_null:
                    new[new_classes] = old[old_classes].to(new.dtype)
                out[table] = new
                null_note = (
                    "the null (guidance) row kept"
                    if new_null and old_null
                    else ("the null row starts from its initialisation" if new_null else "no null row")
                )
                warnings.warn(
                    f"{source}: label table {tuple(old.shape)} adapted to {tuple(new.shape)} (num_classes "
                    f"{old_classes} -> {new_classes}): the first {kept} class rows kept, "
                    f"{max(new_classes - kept, 0)} new from initialisation, {null_note}",
                    stacklevel=3,
                )
    return out


def load_checkpoint(
    model, checkpoint_path: str | Path, strict: bool = True, interpolate: bool = False
) -> None:
    """timm's `checkpoint_path`: a safetensors file, a `.pt` (state dict, train.py or trainer checkpoint,
    EMA preferred, `weights_only`) or a zoo folder, loaded into the built model without adaptation. A
    whole `DiffusionModel.state_dict()` (`net.*` and balancer keys) restores the balancer too."""
    path = Path(checkpoint_path).expanduser()
    mtl_state: dict[str, torch.Tensor] | None = None
    if path.is_dir():
        read_config(path)
        state = load_safetensors(path / WEIGHTS_NAME)
        model._load_mtl_file(path / "mtl.safetensors", source=str(path))
    elif path.is_file() and path.suffix == ".safetensors":
        state = load_safetensors(path)
    elif path.is_file():
        state = convert.load_original_dit_checkpoint(path)
    else:
        raise FileNotFoundError(f"checkpoint_path {path} does not exist")
    if state and all(k.startswith(("net.", "balancer.", "weighting.")) for k in state):
        mtl_state = {k: v for k, v in state.items() if not k.startswith("net.")}
        state = {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}
    model.load_net_state(state, strict=strict, source=str(path), interpolate=interpolate)
    if mtl_state is not None:
        model.load_mtl_state_dict(mtl_state, source=str(path))


def _mtl_file(spec: str, folder: Path) -> Path | None:
    """The balancer-state file of a zoo folder; for `hf-hub:` fetched beside the weights if the repo has it."""
    if spec.startswith("hf-hub:"):
        repo, _, revision = spec[len("hf-hub:") :].partition("@")
        return fetch_mtl_file(repo, revision=revision or None)
    return folder / MTL_WEIGHTS_NAME


def _source_routing(source_config: dict[str, Any] | None, source: str | None, pretrained: Any) -> Any:
    """The routing the loaded weights were trained with: a router config, None (plain) or "unknown"."""
    if source_config is not None:
        return source_config.get("routing")
    if isinstance(pretrained, dict) or source is None:
        return "unknown"
    if str(source).endswith((".pt", ".pth", ".bin")):  # an original (plain) DiT checkpoint
        return None
    if is_location(source):  # a bare .safetensors file: no config to tell
        return "unknown"
    return None if parse_name(source).routing is None else "unknown"  # a registered arch.tag


def _vae_override(cfg: PretrainedCfg) -> dict[str, Any]:
    return {"vae": cfg.vae} if cfg.vae else {}


def _backbone_overrides_from(source_config: dict[str, Any], backbone: str) -> dict[str, Any]:
    """Architecture settings of a saved model, applied when its weights go into a (maybe other) recipe."""
    src = source_config["backbone"]
    if src["name"] != backbone:
        raise ValueError(
            f"weights of backbone {src['name']!r} cannot load into {backbone!r}: the state dicts differ; "
            f"pick a recipe of {src['name']!r}"
        )
    out = dict(src["kwargs"])
    diffusion = source_config.get("diffusion") or {}
    out.update({k: diffusion[k] for k in ("schedule", "num_timesteps") if k in diffusion})
    if source_config.get("vae"):
        out["vae"] = source_config["vae"]
    return out
