"""Pretrained weights: weight configs (plain data), resolution (local file -> Hub -> URL), sha256
checks, the zoo layout (config.json + model.safetensors + README.md) and `create`.

Resolution order for a weight config: its local `file`, then the Hub (`hf_hub_download`, which
respects the cache and HF_HUB_OFFLINE), then its `url` (cached download). Every file with a known
sha256 is checked before it is loaded; a corrupt or truncated file is an error naming the file and
both hashes and is never loaded. Foreign formats (the original DiT `.pt`, diffusers'
`DiTTransformer2DModel`, the ANT/DTR training checkpoints) are opened only by converters
(`zoo.convert`), with `torch.load(weights_only=True)`: pickles are never executed.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import math
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from zoo.registry import UnknownModelError, parse_name

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
PACKAGE_WEIGHTS = Path(__file__).resolve().parent / "pretrained"


class CorruptWeightsError(RuntimeError):
    """A weights file whose sha256 differs from the one its config promises."""


@dataclass(frozen=True)
class PretrainedCfg:
    """One set of pretrained weights for `arch.tag` (like timm's pretrained cfgs): plain data, no code."""

    arch: str  # grammar name without tag, e.g. "dit_xl" or "dit_t_dtr_uw_k5"
    tag: str
    format: str = "zoo"  # zoo | diffusers | dit_original | ant | dtr | adm
    hf_hub_id: str | None = None
    hf_filename: str | None = None
    hf_subfolder: str | None = None
    hf_revision: str | None = None
    url: str | None = None
    file: str | None = None
    sha256: str | None = None
    license: str = "unknown"
    description: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)  # architecture settings of these weights
    recipe: dict[str, Any] = field(default_factory=dict)  # how they were trained
    evaluation: dict[str, Any] = field(default_factory=dict)  # protocol of the results
    results: dict[str, Any] = field(default_factory=dict)  # e.g. {"fid": 5.695, "measured_here": False}
    vae: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return f"{self.arch}.{self.tag}"

    @property
    def has_weights(self) -> bool:
        return bool(self.hf_hub_id or self.url or self.file)


_PRETRAINED: dict[str, PretrainedCfg] = {}


def register_pretrained(cfg: PretrainedCfg) -> PretrainedCfg:
    if cfg.name in _PRETRAINED:
        raise ValueError(f"pretrained weights {cfg.name!r} are already registered")
    parse_name(cfg.arch)
    _PRETRAINED[cfg.name] = cfg
    return cfg


def list_pretrained(pattern: str = "*") -> list[str]:
    """`arch.tag` names with weights, fnmatch-filtered (the first tag of an arch is its default)."""
    _load_builtin_configs()
    return [
        n
        for n in _PRETRAINED
        if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n.split(".")[0], pattern)
    ]


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The weight config of `arch.tag`, or of the default (first registered) tag of `arch`."""
    _load_builtin_configs()
    if name in _PRETRAINED:
        return _PRETRAINED[name]
    arch = name.split(".")[0]
    if "." not in name:
        for cfg in _PRETRAINED.values():
            if cfg.arch == arch and cfg.has_weights:
                return cfg
    import difflib

    close = difflib.get_close_matches(name, list(_PRETRAINED), n=5, cutoff=0.4)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownModelError(f"no pretrained weights named {name!r}.{hint} (zoo.list_pretrained() lists them)")


_BUILTINS_LOADED = False


def _load_builtin_configs() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        import zoo.pretrained_cfgs  # noqa: F401  (registers the built-in weight configs)


# ------------------------------------------------------------------------------ files and hashes


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str | None) -> None:
    """Raise CorruptWeightsError (naming the file and both hashes) when the file does not match."""
    if not expected:
        return
    actual = sha256_of(path)
    if actual != expected.lower():
        raise CorruptWeightsError(
            f"{path}: sha256 {actual} does not match the expected {expected.lower()} "
            "(corrupt or truncated download?); the file was not loaded"
        )


def _cache_dir() -> Path:
    root = os.environ.get("ZOO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "dit-mtl-zoo"
    )
    return Path(root)


def offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (when it is imported): no network for Hub nor URL weights."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def network_timeout(variable: str = "HF_HUB_DOWNLOAD_TIMEOUT") -> float:
    """Seconds a connection or a read may stall: huggingface_hub's HF_HUB_DOWNLOAD_TIMEOUT (reads) or
    HF_HUB_ETAG_TIMEOUT (metadata), read at call time; default 10."""
    raw = os.environ.get(variable)
    try:
        value = float(raw) if raw else 10.0
    except ValueError:
        raise ValueError(f"{variable}={raw!r}: expected a number of seconds > 0") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{variable}={raw!r}: expected a number of seconds > 0")
    return value


def download_url(url: str, sha256: str | None = None) -> Path:
    """Download `url` into the cache (once) and check its hash; file:// URLs work for local mirrors.

    Honours HF_HUB_OFFLINE (only the cache and file:// are read) and stops when the server does not
    answer a connection or a read within `network_timeout()` seconds, naming the URL.
    """
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https", "file"):
        raise ValueError(f"{url}: unsupported URL scheme {scheme!r}; expected http, https or file")
    name = os.path.basename(urllib.parse.urlparse(url).path) or "download"
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    target = _cache_dir() / "url" / key / name
    if not target.exists():
        if scheme != "file" and offline():
            raise ConnectionError(
                f"{url}: HF_HUB_OFFLINE is set and the file is not in the cache ({target}); nothing was downloaded"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".part")
        timeout = network_timeout()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:  # noqa: S310
                shutil.copyfileobj(response, out)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, TimeoutError):
                raise TimeoutError(
                    f"{url}: no answer within {timeout:g} s (HF_HUB_DOWNLOAD_TIMEOUT); nothing was kept"
                ) from exc
            if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
                raise ConnectionError(f"{url}: {reason}") from exc
            raise
        os.replace(tmp, target)
    try:
        verify_sha256(target, sha256)
    except CorruptWeightsError:
        target.unlink(missing_ok=True)  # never keep a bad file in the cache
        raise
    return target


def hub_download(
    repo_id: str, filename: str, subfolder: str | None = None, revision: str | None = None, **kwargs: Any
) -> Path:
    """`hf_hub_download` (cache, HF_HUB_OFFLINE, HF_ENDPOINT) that fails fast when the endpoint stalls.

    huggingface_hub retries a metadata request that timed out for about a minute when nothing is
    cached; so when the file is not cached, one metadata request with HF_HUB_ETAG_TIMEOUT comes first,
    and a server that does not answer it is an error naming the URL.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.utils import HfHubHTTPError

    endpoint = os.environ.get("HF_ENDPOINT")
    timeout = network_timeout("HF_HUB_ETAG_TIMEOUT")
    relative = f"{subfolder}/{filename}" if subfolder else filename
    cached = try_to_load_from_cache(repo_id, relative, revision=revision, cache_dir=kwargs.get("cache_dir"))
    local_only = offline() or kwargs.get("local_files_only")
    if not local_only and (kwargs.get("force_download") or not isinstance(cached, str)):
        url = hf_hub_url(repo_id, filename, subfolder=subfolder, revision=revision, endpoint=endpoint)
        try:
            get_hf_file_metadata(url, token=kwargs.get("token"), timeout=timeout)
        except HfHubHTTPError:
            raise  # the Hub answered (not found, gated, ...): its own error names the URL
        except Exception as exc:
            if isinstance(exc, TimeoutError) or "timeout" in type(exc).__name__.lower():
                raise TimeoutError(
                    f"{url}: no answer within {timeout:g} s (HF_HUB_ETAG_TIMEOUT); nothing was downloaded"
                ) from exc
            raise ConnectionError(f"{url}: {type(exc).__name__}: {exc}") from exc
    return Path(
        hf_hub_download(
            repo_id,
            filename,
            subfolder=subfolder,
            revision=revision,
            endpoint=endpoint,
            etag_timeout=timeout,
            **kwargs,
        )
    )


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


# ------------------------------------------------------------------------------ the zoo layout


def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: a zoo weights folder holds {CONFIG_NAME}, {WEIGHTS_NAME}, {CARD_NAME}"
        )
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    from zoo.validate import validate_config

    return validate_config(config, str(path))


_CARD_SHA256 = re.compile(r"model\.safetensors sha256 \| `([0-9a-fA-F]{64})`")


def recorded_sha256(folder: str | Path, config: dict[str, Any] | None = None) -> tuple[str, Path] | None:
    """The sha256 a weights folder records for its model.safetensors (config.json `sha256`, or the model
    card's `model.safetensors sha256` row) and the file that records it; None when neither does."""
    folder = Path(folder)
    value = (config or {}).get("sha256")
    if isinstance(value, str) and value:
        return value, folder / CONFIG_NAME
    card = folder / CARD_NAME
    if card.is_file():
        match = _CARD_SHA256.search(card.read_text(errors="replace"))
        if match:
            return match.group(1), card
    return None


def load_folder(folder: str | Path, config: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The weights of a zoo weights folder, checked against the sha256 its config or card records."""
    folder = Path(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(
            f"{weights} not found: a zoo weights folder holds {CONFIG_NAME}, {WEIGHTS_NAME}"
        )
    recorded = recorded_sha256(folder, config)
    if recorded:
        try:
            verify_sha256(weights, recorded[0])
        except CorruptWeightsError as exc:
            raise CorruptWeightsError(f"{exc} (the sha256 recorded in {recorded[1]})") from None
    state_dict = load_safetensors(weights)
    if config is not None:
        from zoo.validate import check_learn_sigma

        check_learn_sigma(config, state_dict, str(folder / CONFIG_NAME))
    return state_dict


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated headers
        raise CorruptWeightsError(f"{path}: not a readable safetensors file ({exc})") from exc


def save_pretrained(
    model,
    directory: str | Path,
    card: dict[str, Any] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the zoo layout. `state_dict` (e.g. the EMA weights) defaults to the net's own."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: v.detach().to("cpu").contiguous() for k, v in (state_dict or model.net.state_dict()).items()
    }
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "library": "dit-mtl-zoo"})
    config = copy.deepcopy(model.config)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    from zoo.card import render_card

    card = dict(card or {})
    card.setdefault("sha256", sha256_of(directory / WEIGHTS_NAME))
    (directory / CARD_NAME).write_text(
        render_card(config, card, num_parameters=sum(t.numel() for t in tensors.values()))
    )
    return directory


_NO_TOKEN = (
    "pushing to {repo_id} needs a Hugging Face token with write access: set HF_TOKEN, run `hf auth login` "
    "or pass token=...; nothing was uploaded"
)


def push_to_hub(
    model,
    repo_id: str,
    card: dict[str, Any] | None = None,
    private: bool = False,
    commit_message: str = "Upload model",
    token: str | None = None,
) -> str:
    """Save into a temporary folder and upload it with HfApi (same layout as save_pretrained)."""
    import tempfile

    from huggingface_hub import HfApi, get_token

    if not (token or get_token()):
        raise PermissionError(_NO_TOKEN.format(repo_id=repo_id))
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT"), token=token)  # read now, like the downloads
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, card=card)  # the model's own: mtl.safetensors (balancer state) too
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
    return str(getattr(info, "commit_url", info))


def push_folder(directory: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload an existing zoo weights folder (the `zoo push DIR REPO` command)."""
    from huggingface_hub import HfApi, get_token

    read_config(directory)
    if not (Path(directory) / WEIGHTS_NAME).exists():
        raise FileNotFoundError(f"{Path(directory) / WEIGHTS_NAME} not found")
    if not (token or get_token()):
        raise PermissionError(_NO_TOKEN.format(repo_id=repo_id))
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT"), token=token)  # read now, like the downloads
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(directory), commit_message="Upload model")
    return str(getattr(info, "commit_url", info))


def _hub_folder(repo_id: str, revision: str | None = None) -> Path:
    config = hub_download(repo_id, CONFIG_NAME, revision=revision)
    hub_download(repo_id, WEIGHTS_NAME, revision=revision)
    return config.parent


# ------------------------------------------------------------------------------ create


def _state_dict_from_source(cfg: PretrainedCfg) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Fetch and convert the weights of a config; returns (our state dict, the zoo config if any)."""
    from zoo import convert

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
    raise ValueError(
        f"{cfg.name}: unknown weights format {cfg.format!r} (zoo, diffusers, dit_original, ant, dtr, adm)"
    )


def _location_config(spec: str) -> tuple[dict[str, Any], Path]:
    """`local-dir:PATH`, `hf-hub:org/name[@rev]` or a folder path -> (config, folder)."""
    if spec.startswith("local-dir:"):
        if not spec[len("local-dir:") :]:
            raise ValueError("local-dir: needs a folder, e.g. local-dir:path/to/weights")
        folder = Path(spec[len("local-dir:") :]).expanduser()
    elif spec.startswith("hf-hub:"):
        repo, _, revision = spec[len("hf-hub:") :].partition("@")
        folder = _hub_folder(repo, revision or None)
    else:
        folder = Path(spec).expanduser()
    return read_config(folder), folder


def is_location(value: Any) -> bool:
    """A weights location, never a registry name: `local-dir:`, `hf-hub:`, a Path, or a string written as a
    path (absolute, `./x`, `../x`, `~/x`, or holding a `/`). A folder in the current directory named like a
    model (`./dit_t`) therefore never shadows the registry's `dit_t`."""
    if isinstance(value, Path):
        return True
    if not isinstance(value, str):
        return False
    return (
        value.startswith(("local-dir:", "hf-hub:", "~"))
        or value in (".", "..")
        or os.path.isabs(value)
        or "/" in value
        or os.sep in value
    )


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
    from zoo.model import DiffusionModel

    if pretrained_cfg_overlay is not None:
        pretrained_cfg_overlay = _check_overlay(pretrained_cfg_overlay)
    if is_location(name):
        config, folder = _location_config(str(name))
        if overrides:
            raise TypeError(f"overrides {sorted(overrides)} cannot change a model loaded from {name}")
        state_dict = load_folder(folder, config)
        model = DiffusionModel(config)
        _load_into(model, state_dict, strict=strict, source=str(folder))
        model._load_mtl_file(_mtl_file(str(name), folder), source=str(folder))
        model.pretrained_cfg = {"architecture": config.get("name"), "source": str(name), "file": str(folder)}
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
                from zoo import convert

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
    from zoo.validate import check_recipe

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
        _load_into(model, state_dict, strict=strict, source=source, interpolate=interpolate_pos_embed)
        from zoo.model import check_warm_start

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
    import dataclasses

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
    """State-dict names of the stem conv, the output layer and the label table of a backbone."""
    if arch == "adm":
        return {"stem": "input_blocks.0.0", "head": "out.2", "labels": "label_emb"}
    return {"stem": "x_embedder.proj", "head": "final_layer.linear", "labels": "y_embedder.embedding_table"}


def _weights_kwargs(cfg: PretrainedCfg) -> dict[str, Any] | None:
    """Backbone settings of registered weights (their recipe's defaults with the cfg's overrides)."""
    from zoo.model import config_from_name

    try:
        overrides = {k: v for k, v in cfg.overrides.items()}
        return dict(config_from_name(cfg.arch, **overrides)["backbone"]["kwargs"])
    except (UnknownModelError, TypeError, ValueError):
        return None


def pretrained_cfg_dict(cfg: PretrainedCfg, model) -> dict[str, Any]:
    """timm-style `pretrained_cfg`: the weight config as a dict, with architecture, the weights'
    input_size (C, H, W) and num_classes, and the names of the first conv and the label table."""
    import dataclasses

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
    from zoo import convert

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
    _load_into(model, state, strict=strict, source=str(path), interpolate=interpolate)
    if mtl_state is not None:
        model.load_mtl_state_dict(mtl_state, source=str(path))


def _mtl_file(spec: str, folder: Path) -> Path | None:
    """The balancer-state file of a zoo folder; for `hf-hub:` fetched beside the weights if the repo has it."""
    if spec.startswith("hf-hub:"):
        from zoo.model import fetch_mtl_file

        repo, _, revision = spec[len("hf-hub:") :].partition("@")
        return fetch_mtl_file(repo, revision=revision or None)
    return folder / "mtl.safetensors"


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


def _load_into(
    model, state_dict: dict[str, torch.Tensor], strict: bool, source: str | None, interpolate: bool = False
) -> None:
    """Load a backbone state dict, handling a different class count and position-embedding size.

    Weights that are not floating point where the model's are (int8, bool, ...) or hold NaN/inf are refused."""
    from zoo.validate import check_weights

    net = model.net
    own = net.state_dict()
    check_weights(state_dict, str(source), expected=own)
    state_dict = dict(state_dict)
    table = "y_embedder.embedding_table.weight"
    if table in state_dict and table in own and state_dict[table].shape != own[table].shape:
        warnings.warn(
            f"{source}: label table {tuple(state_dict[table].shape)} does not fit this model's "
            f"{tuple(own[table].shape)} (different num_classes): dropped, the new table (null class = last row) "
            "starts from its initialisation",
            stacklevel=3,
        )
        del state_dict[table]
    if (
        "pos_embed" in state_dict
        and "pos_embed" in own
        and state_dict["pos_embed"].shape != own["pos_embed"].shape
    ):
        if not interpolate:
            raise ValueError(
                f"{source}: position embedding {tuple(state_dict['pos_embed'].shape)} does not fit "
                f"{tuple(own['pos_embed'].shape)}: the input or patch size differs; pass interpolate_pos_embed=True "
                "to resize it"
            )
        # DiT's position embedding is fixed sin-cos: the model's own, recomputed for its grid, is exact.
        del state_dict["pos_embed"]
    for key, value in state_dict.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(
                f"{source}: {key} has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)}"
            )
    missing, unexpected = net.load_state_dict(state_dict, strict=False)
    allowed_missing = {table, "pos_embed"}
    missing = [k for k in missing if k not in allowed_missing]
    if strict and (missing or unexpected):
        raise ValueError(
            f"{source}: state dict does not match the model: missing {missing[:8]}, unexpected {unexpected[:8]}"
        )
