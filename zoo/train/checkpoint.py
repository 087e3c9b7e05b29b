"""Training checkpoints: atomic writes with a sha256 sidecar, keep-last-N, corrupt-file fallback, RNG states.

A checkpoint is `RUN_DIR/checkpoints/step-NNNNNNNN.pt` (a torch file loadable with `weights_only=True`:
tensors, numbers, strings, lists and dicts only) plus `step-NNNNNNNN.pt.sha256`. Both are written to a
temporary file, fsynced and renamed, so a kill at any moment leaves either the old or the new file;
a checkpoint whose hash does not match (or has no sidecar) is skipped in favour of the previous one.

A write that fails (ENOSPC: `CheckpointSpaceError`, "no space left on <dir>, about N MB needed") deletes
its partial files and leaves every earlier checkpoint in place. Temporary files a killed run left behind
are removed by `remove_orphaned_temporaries` (the trainer calls it at start, holding the run's `RunLock`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.data.images import ensure_writable  # noqa: F401  (re-exported: checkpoints' outputs)

CHECKPOINT_PATTERN = re.compile(r"step-(\d{8})\.pt")
#: the temporary files `save_checkpoint` / `atomic_write_bytes` write before renaming (".NAME.tmpPID")
TEMPORARY_PATTERN = re.compile(r"\.step-\d{8}\.pt(\.sha256)?\.tmp\d+")
LOCK_NAME = "train.lock"


class NoCheckpointError(FileNotFoundError):
    """No usable checkpoint in a run folder."""


class CheckpointSpaceError(OSError):
    """A checkpoint did not fit on its disk; the partial file is deleted, earlier checkpoints are kept."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28]" prefix
        return str(self.strerror)


class RunLockedError(RuntimeError):
    """Another live process trains in the same run folder."""


def state_nbytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint state: about the size of its file."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_nbytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_nbytes(value) for value in state)
    return 0


def _is_out_of_space(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def _space_error(directory: Path, needed_bytes: int) -> CheckpointSpaceError:
    try:
        free = f", {os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize / 1e6:.0f} MB free"
    except OSError:
        free = ""
    return CheckpointSpaceError(
        errno.ENOSPC,
        f"no space left on {directory}, about {max(1, round(needed_bytes / 1e6))} MB needed{free}; "
        "the partial file was deleted and the earlier checkpoints are kept",
    )


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
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if _is_out_of_space(error):
            raise _space_error(path.parent, len(data)) from error
        raise
    _fsync_dir(path.parent)


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file in the run, oldest first (validity not checked)."""
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_PATTERN.fullmatch(p.name))]
    return sorted(found)


def _write_state(state: dict[str, Any], handle: Any) -> None:
    torch.save(state, handle)


def save_checkpoint(
    state: dict[str, Any],
    run_dir: str | os.PathLike,
    step: int,
    keep_last: int = 3,
    protect: str | os.PathLike | None = None,
) -> Path:
    """Atomically write `state` as the checkpoint of `step` with its sha256 sidecar; keep the newest `keep_last`.

    `protect` (a checkpoint path) is never pruned: the trainer's last checkpoint before a non-finite
    step. A failed write removes its partial files and raises (`CheckpointSpaceError` when the disk is
    full) without touching the earlier checkpoints.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    directory = checkpoint_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:08d}.pt"
    temporary = directory / f".{path.name}.tmp{os.getpid()}"
    try:
        with open(temporary, "wb") as handle:
            _write_state(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        digest = sha256_file(temporary)
        os.replace(temporary, path)
    except BaseException as error:  # torch wraps ENOSPC in a RuntimeError from its zip writer
        temporary.unlink(missing_ok=True)
        if (
            _is_out_of_space(error)
            or _is_out_of_space(error.__cause__ or error.__context__)
            or ("No space left" in str(error))
        ):
            raise _space_error(directory, state_nbytes(state)) from error
        raise
    try:
        atomic_write_bytes(path.with_name(path.name + ".sha256"), f"{digest}  {path.name}\n".encode())
    except BaseException:
        path.unlink(missing_ok=True)  # a checkpoint without its sidecar is unusable: do not leave it
        raise
    protected = Path(protect).resolve() if protect is not None else None
    for _, old in list_checkpoints(run_dir)[:-keep_last]:
        if protected is not None and old.resolve() == protected:
            continue
        old.unlink(missing_ok=True)
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    return path


def remove_orphaned_temporaries(run_dir: str | os.PathLike) -> tuple[int, int]:
    """Delete the checkpoint temporary files a killed run left; returns (files, bytes) removed.

    Call it only while holding the run's lock (a live writer's temporary file looks the same).
    """
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return 0, 0
    count = size = 0
    for path in directory.iterdir():
        if TEMPORARY_PATTERN.fullmatch(path.name) and path.is_file():
            size += path.stat().st_size
            path.unlink(missing_ok=True)
            count += 1
    return count, size


# ------------------------------------------------------------------------------------------ run lock


def _process_start_ticks(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot (Linux /proc), None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _process_alive(pid: int, start_ticks: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    if start_ticks is not None:  # the pid may have been reused by another process since
        now = _process_start_ticks(pid)
        return now is None or now == start_ticks
    return True


class RunLock:
    """`RUN_DIR/train.lock`: one trainer per run folder, held for the whole run.

    The file records pid, host and start time. `acquire()` refuses a lock of a live process (or of
    another host, whose processes it cannot see) with `RunLockedError`; a lock whose process on this
    host is gone is taken over with a warning. `release()` removes it (only if it is still ours).
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def _record(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "start_ticks": _process_start_ticks(os.getpid()),
        }

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = self._record()
        for _attempt in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                other = self.read()
                if other is None:  # being written right now, or garbage: look again
                    time.sleep(0.1)
                    other = self.read() or {}
                pid, host = other.get("pid"), other.get("host")
                same_host = host == record["host"]
                if isinstance(pid, int) and same_host and not _process_alive(pid, other.get("start_ticks")):
                    warnings.warn(
                        f"{self.path}: taking over the lock of process {pid} on {host} (started "
                        f"{other.get('started')}), which is no longer running",
                        stacklevel=2,
                    )
                    self.path.unlink(missing_ok=True)
                    continue
                if not other and not same_host:
                    other = {"pid": "?", "host": "?", "started": "?"}
                raise RunLockedError(
                    f"{self.path.parent} is in use by another trainer (pid {pid}, host {host}, started "
                    f"{other.get('started')}); wait for it, choose another --out, or delete {self.path} "
                    "if that run is no longer running"
                ) from None
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(record) + "\n")
            self.held = True
            return self
        raise RunLockedError(f"could not take the lock {self.path}")

    def release(self) -> None:
        if not self.held:
            return
        current = self.read()
        if current is not None and current.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


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
