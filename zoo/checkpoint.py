"""Training checkpoints: atomic writes with a sha256 sidecar, keep-last-N, corrupt-file fallback, RNG states.

A checkpoint is `RUN_DIR/checkpoints/step-NNNNNNNN.pt` (a torch file loadable with `weights_only=True`:
tensors, numbers, strings, lists and dicts only) plus `step-NNNNNNNN.pt.sha256`. Both are written to a
temporary file, fsynced and renamed, so a kill at any moment leaves either the old or the new file;
a checkpoint whose hash does not match (or has no sidecar) is skipped in favour of the previous one.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_PATTERN = re.compile(r"step-(\d{8})\.pt")


class NoCheckpointError(FileNotFoundError):
    """No usable checkpoint in a run folder."""


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    if os.name == "posix":
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file, fsync and rename (readers never see half a file)."""
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file in the run, oldest first (validity not checked)."""
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_PATTERN.fullmatch(p.name))]
    return sorted(found)


def save_checkpoint(state: dict[str, Any], run_dir: str | os.PathLike, step: int, keep_last: int = 3) -> Path:
    """Atomically write `state` as the checkpoint of `step` with its sha256 sidecar; keep the newest `keep_last`."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    directory = checkpoint_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:08d}.pt"
    temporary = directory / f".{path.name}.tmp{os.getpid()}"
    with open(temporary, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    digest = sha256_file(temporary)
    os.replace(temporary, path)
    atomic_write_bytes(path.with_name(path.name + ".sha256"), f"{digest}  {path.name}\n".encode())
    for _, old in list_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    return path


def verify_checkpoint(path: Path) -> str | None:
    """None when `path` matches its sha256 sidecar, else the reason it does not."""
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.is_file():
        return "its .sha256 sidecar is missing (write interrupted?)"
    expected = sidecar.read_text().split()[0] if sidecar.read_text().strip() else ""
    actual = sha256_file(path)
    if actual != expected:
        return f"sha256 {actual[:12]}... does not match the recorded {expected[:12]}..."
    return None


def load_latest_checkpoint(
    run_dir: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[dict, Path]:
    """The newest checkpoint that verifies and loads; corrupt ones are reported and skipped."""
    candidates = list_checkpoints(run_dir)
    for _step, path in reversed(candidates):
        problem = verify_checkpoint(path)
        if problem is None:
            try:
                return torch.load(path, map_location=map_location, weights_only=True), path
            except Exception as error:  # a hash-valid file torch cannot read is as unusable as a corrupt one
                problem = f"torch.load failed ({error})"
        warnings.warn(
            f"checkpoint {path} is unusable: {problem}; falling back to the previous one", stacklevel=2
        )
    where = checkpoint_dir(run_dir)
    raise NoCheckpointError(f"no usable checkpoint in {where} (found {len(candidates)} file(s))")


def capture_rng_state() -> dict[str, Any]:
    """RNG states of python, numpy, torch CPU and every CUDA device, as weights_only-loadable values."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], keys, numpy["position"], numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
