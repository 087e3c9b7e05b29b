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
import os
import shutil
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


def download_url(url: str, sha256: str | None = None) -> Path:
    """Download `url` into the cache (once) and check its hash; file:// URLs work for local mirrors."""
    name = os.path.basename(urllib.parse.urlparse(url).path) or "download"
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    target = _cache_dir() / "url" / key / name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".part")
        with urllib.request.urlopen(url) as response, open(tmp, "wb") as out:  # noqa: S310 (user-given weight URL)
            shutil.copyfileobj(response, out)
        os.replace(tmp, target)
    try:
        verify_sha256(target, sha256)
    except CorruptWeightsError:
        target.unlink(missing_ok=True)  # never keep a bad file in the cache
        raise
    return target


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
        from huggingface_hub import hf_hub_download

        filename = cfg.hf_filename or WEIGHTS_NAME
        try:
            path = Path(
                hf_hub_download(
                    cfg.hf_hub_id,
                    filename,
                    subfolder=cfg.hf_subfolder,
                    revision=cfg.hf_revision,
                    endpoint=os.environ.get("HF_ENDPOINT"),
                )
            )
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
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


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
        save_pretrained(model, tmp, card=card)
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
    from huggingface_hub import hf_hub_download

    endpoint = os.environ.get("HF_ENDPOINT")
    config = hf_hub_download(repo_id, CONFIG_NAME, revision=revision, endpoint=endpoint)
    hf_hub_download(repo_id, WEIGHTS_NAME, revision=revision, endpoint=endpoint)
    return Path(config).parent


# ------------------------------------------------------------------------------ create


def _state_dict_from_source(cfg: PretrainedCfg) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Fetch and convert the weights of a config; returns (our state dict, the zoo config if any)."""
    from zoo import convert

    path = resolve_file(cfg)
    if cfg.format == "zoo":
        if path.is_dir():
            config = read_config(path)
            weights = path / WEIGHTS_NAME
            verify_sha256(weights, cfg.sha256)
            return load_safetensors(weights), config
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
        folder = Path(spec[len("local-dir:") :]).expanduser()
    elif spec.startswith("hf-hub:"):
        repo, _, revision = spec[len("hf-hub:") :].partition("@")
        folder = _hub_folder(repo, revision or None)
    else:
        folder = Path(spec).expanduser()
    return read_config(folder), folder


def _is_location(value: Any) -> bool:
    return isinstance(value, (str, Path)) and (
        str(value).startswith(("local-dir:", "hf-hub:")) or Path(str(value)).expanduser().exists()
    )


def create(
    name: str,
    pretrained: bool | str | Path | dict = False,
    *,
    strict: bool = True,
    interpolate_pos_embed: bool = False,
    **overrides: Any,
):
    """Build a model by name (timm style) and optionally load weights.

    `name` is a grammar name (`dit_l_dtr_nash_k5`, `dit_xl.in1k_256`), `local-dir:PATH` or
    `hf-hub:org/name`. `pretrained` is False, True (the default tag, or the name's tag), a tag,
    another `arch.tag` (e.g. plain weights into a routed/MTL recipe), a path, `local-dir:`,
    `hf-hub:`, or an in-memory state dict. Overrides change architecture or recipe settings.
    """
    from zoo.model import DiffusionModel

    if _is_location(name):
        config, folder = _location_config(str(name))
        if overrides:
            raise TypeError(f"overrides {sorted(overrides)} cannot change a model loaded from {name}")
        model = DiffusionModel(config)
        _load_into(model, load_safetensors(folder / WEIGHTS_NAME), strict=strict, source=str(folder))
        return model

    parsed = parse_name(name)
    state_dict: dict[str, torch.Tensor] | None = None
    source_config: dict[str, Any] | None = None
    source = None
    if pretrained is False and parsed.tag:  # timm semantics: the tag fixes the settings, not the weights
        cfg = get_pretrained_cfg(parsed.full_name)
        overrides = {**cfg.overrides, **_vae_override(cfg), **overrides}
    elif pretrained is True:
        cfg = get_pretrained_cfg(parsed.full_name if parsed.tag else parsed.arch_name)
        state_dict, source_config, source = *_state_dict_from_source(cfg), cfg.name
        overrides = {**cfg.overrides, **_vae_override(cfg), **overrides}
    elif isinstance(pretrained, dict):
        state_dict, source = pretrained, "state dict"
    elif pretrained:
        spec = str(pretrained)
        if _is_location(spec):
            folder = None
            if spec.endswith(".safetensors") and Path(spec).is_file():
                state_dict = load_safetensors(spec)
            elif spec.endswith((".pt", ".pth", ".bin")) and Path(spec).is_file():
                from zoo import convert

                state_dict = convert.load_original_dit_checkpoint(spec)
            else:
                source_config, folder = _location_config(spec)
                state_dict = load_safetensors(folder / WEIGHTS_NAME)
            source = spec
        else:  # a tag of this arch, or another arch.tag (finetuning plain weights into a recipe)
            key = spec if "." in spec else f"{parsed.arch_name}.{spec}"
            try:
                cfg = get_pretrained_cfg(key)
            except UnknownModelError:
                cfg = (
                    get_pretrained_cfg(f"{parsed.backbone}.{spec}")
                    if "." not in spec
                    else get_pretrained_cfg(spec)
                )
            state_dict, source_config, source = *_state_dict_from_source(cfg), cfg.name
            overrides = {**cfg.overrides, **_vae_override(cfg), **overrides}
    if source_config is not None:
        overrides = {**_backbone_overrides_from(source_config, parsed.backbone), **overrides}
    model = DiffusionModel.from_name(parsed, **overrides)
    if state_dict is not None:
        _load_into(model, state_dict, strict=strict, source=source, interpolate=interpolate_pos_embed)
        from zoo.model import check_warm_start

        check_warm_start(model, _source_routing(source_config, source, pretrained), source)
    return model


def _source_routing(source_config: dict[str, Any] | None, source: str | None, pretrained: Any) -> Any:
    """The routing the loaded weights were trained with: a router config, None (plain) or "unknown"."""
    if source_config is not None:
        return source_config.get("routing")
    if isinstance(pretrained, dict) or source is None:
        return "unknown"
    if str(source).endswith((".pt", ".pth", ".bin")):  # an original (plain) DiT checkpoint
        return None
    if _is_location(source):  # a bare .safetensors file: no config to tell
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
    """Load a backbone state dict, handling a different class count and position-embedding size."""
    net = model.net
    own = net.state_dict()
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
