"""The weights-folder format and how a folder is fetched: one folder (or Hub repo) per `name.tag`.

A zoo weights folder holds config.json (everything to rebuild the model), model.safetensors (the net's
weights), mtl.safetensors (the balancer's state, when it has any) and README.md (the model card with
the weights' sha256). This module reads and writes that layout, checks hashes, and fetches files from
the Hub (`hf_hub_download`: its cache, HF_HUB_OFFLINE, HF_ENDPOINT) or a URL, failing fast when an
endpoint stalls. Nothing is unpickled: safetensors only.
"""

from __future__ import annotations

import copy
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
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from zoo.card import render_card
from zoo.validate import check_learn_sigma, validate_config

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
MTL_WEIGHTS_NAME = "mtl.safetensors"


class CorruptWeightsError(RuntimeError):
    """A weights file whose sha256 differs from the one its config promises."""


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
        check_learn_sigma(config, state_dict, str(folder / CONFIG_NAME))
    return state_dict


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated headers
        raise CorruptWeightsError(f"{path}: not a readable safetensors file ({exc})") from exc


def save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """`safetensors.torch.save_file` with a byte-stable file: the same tensors and metadata give the same
    bytes (and sha256) in every process. safetensors writes the `__metadata__` entries in a hash-map
    order that changes between calls (two keys: two possible files, so two sha256 for equal weights);
    the header is re-serialised with sorted keys, padded to its original length (the data offsets are
    relative to the end of the header, so nothing else moves)."""
    data = safetensors_bytes(tensors, metadata=metadata)
    size = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + size]), sort_keys=True, separators=(",", ":")).encode()
    if len(header) > size:  # cannot happen (same content, compact separators); never write a bad file
        raise RuntimeError("safetensors header grew when re-serialised")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:  # the tensor data is written from the buffer, not copied (XL: 2.7 GB)
        handle.write(data[:8] + header + b" " * (size - len(header)))
        handle.write(memoryview(data)[8 + size :])
    os.replace(tmp, path)
    return path


def save_folder(
    directory: str | Path,
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    card: dict[str, Any] | None = None,
) -> Path:
    """Write the layout: model.safetensors (`state_dict`, e.g. the EMA weights), config.json and the
    README.md model card (with the weights' sha256)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    save_safetensors(tensors, directory / WEIGHTS_NAME, metadata={"format": "pt", "library": "dit-mtl-zoo"})
    config = copy.deepcopy(config)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    card = dict(card or {})
    card.setdefault("sha256", sha256_of(directory / WEIGHTS_NAME))
    (directory / CARD_NAME).write_text(
        render_card(config, card, num_parameters=sum(t.numel() for t in tensors.values()))
    )
    return directory


def save_mtl_state(directory: str | Path, state: dict[str, torch.Tensor]) -> None:
    """mtl.safetensors: the balancer's state (none: no file)."""
    path = Path(directory) / MTL_WEIGHTS_NAME
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    if state:
        save_safetensors(state, path, metadata={"format": "pt", "library": "dit-mtl-zoo"})
    else:
        path.unlink(missing_ok=True)


_NO_TOKEN = (
    "pushing to {repo_id} needs a Hugging Face token with write access: set HF_TOKEN, run `hf auth login` "
    "or pass token=...; nothing was uploaded"
)


def push_folder(
    directory: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload model",
) -> str:
    """Upload a zoo weights folder with HfApi (`zoo push DIR REPO`, `model.push_to_hub`); checks the token
    and the folder before anything is sent."""
    from huggingface_hub import HfApi, get_token

    read_config(directory)
    if not (Path(directory) / WEIGHTS_NAME).exists():
        raise FileNotFoundError(f"{Path(directory) / WEIGHTS_NAME} not found")
    if not (token or get_token()):
        raise PermissionError(_NO_TOKEN.format(repo_id=repo_id))
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT"), token=token)  # read now, like the downloads
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(directory), commit_message=commit_message)
    return str(getattr(info, "commit_url", info))


def download_folder(
    repo_id: str,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """config.json, model.safetensors and (when the repo has it) mtl.safetensors of a Hub repo, cached."""
    common = dict(
        revision=revision,
        cache_dir=cache_dir,
        force_download=force_download,
        token=token,
        local_files_only=local_files_only,
    )
    config = hub_download(repo_id, CONFIG_NAME, **common)
    hub_download(repo_id, WEIGHTS_NAME, **common)
    fetch_mtl_file(repo_id, **common)
    return config.parent


def fetch_mtl_file(repo_id: str, revision: str | None = None, **kwargs: Any) -> Path | None:
    """The repo's mtl.safetensors (balancer state), or None when it has none."""
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return hub_download(repo_id, MTL_WEIGHTS_NAME, revision=revision, **kwargs)
    except (LocalEntryNotFoundError, TimeoutError, ConnectionError):  # unreachable: the model still works
        warnings.warn(
            f"{repo_id}: {MTL_WEIGHTS_NAME} (the balancer state, if the repo has one) is not in the cache and "
            "the Hub cannot be reached: the balancer starts from its initialisation",
            stacklevel=3,
        )
    except EntryNotFoundError:  # the repo has none: a model without state outside the net
        pass
    return None
