"""Writing outputs: image grids, one PNG per image, the ADM evaluator's NPZ (uint8 NHWC `arr_0`), and
the check that an output path can be written before any work starts."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1], (N, C, H, W) with C 1 or 3 -> uint8 (N, H, W, C), rounded as ADM does."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, C, H, W) with C 1 or 3, got shape {tuple(images.shape)}")
    scaled = ((images.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).numpy()


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """Tile images in [-1, 1] into one uint8 (H, W, C) array, `nrow` images per row, black padding."""
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    pixels = to_uint8(images)
    count, height, width, channels = pixels.shape
    columns = min(nrow, count)
    rows = math.ceil(count / columns)
    grid = np.zeros(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, channels), dtype=np.uint8
    )
    for index, image in enumerate(pixels):
        row, column = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + column * (width + padding)
        grid[top : top + height, left : left + width] = image
    return grid


def _pil(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8, upscale: int = 1) -> Path:
    """Save images in [-1, 1] (N, C, H, W) as one PNG grid; `upscale` enlarges tiny images (nearest)."""
    grid = make_grid(images, nrow=nrow)
    if upscale > 1:
        grid = grid.repeat(upscale, axis=0).repeat(upscale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _pil(grid).save(path)
    return path


def save_images(images: torch.Tensor, directory: str | os.PathLike, start: int = 0) -> list[Path]:
    """Save each image as DIR/NNNNNN.png, numbered from `start` (to continue across batches)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for offset, image in enumerate(to_uint8(images)):
        path = directory / f"{start + offset:06d}.png"
        _pil(image).save(path)
        paths.append(path)
    return paths


def save_npz(images: torch.Tensor | np.ndarray, path: str | os.PathLike) -> Path:
    """Save a batch as NPZ with `arr_0` uint8 (N, H, W, 3), the layout the ADM FID evaluator reads.

    Accepts [-1, 1] tensors (N, C, H, W) or uint8 arrays (N, H, W, C); grey images are repeated to RGB.
    """
    pixels = images if isinstance(images, np.ndarray) else to_uint8(images)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 (N, H, W, 1|3), got {pixels.dtype} {pixels.shape}")
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:  # a handle keeps the exact name (np.savez would append .npz)
        np.savez(handle, arr_0=pixels)
    return path


def ensure_writable(path: str | os.PathLike, directory: bool = False) -> Path:
    """Refuse, before any work, an output path that cannot be written (raises `PermissionError`).

    `path` is a file to write (or, with `directory=True`, a folder to write into): it must not be the
    wrong kind of thing, and its nearest existing folder must accept a new file (tried, then removed).
    Nothing is created.
    """
    path = Path(path)
    if path.exists():
        if directory and not path.is_dir():
            raise PermissionError(f"output folder {path} exists and is not a folder")
        if not directory and path.is_dir():
            raise PermissionError(f"output file {path} is a folder")
        if not directory and not os.access(path, os.W_OK):
            raise PermissionError(f"output file {path} is not writable")
    existing = path if directory and path.is_dir() else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise PermissionError(f"cannot write {path}: {existing} is a file, not a folder")
    probe = existing / f".zoo-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
    except OSError as error:
        raise PermissionError(f"cannot write {path}: {existing} is not writable ({error.strerror})") from None
    probe.unlink(missing_ok=True)
    return path
