"""Sample-quality metrics on the features of a pluggable extractor, and the protocol every result records.

FID and KID go through torchmetrics (fed our extractor's features, in float64); precision and
recall (k-nearest-neighbour manifolds, Kynkäänniemi et al. 2019, as in the ADM evaluator), the
Inception Score and class-conditional accuracy are written here because torchmetrics lacks the
first and the others are one line on logits we already have.

An extractor is an `nn.Module` whose `forward(images)` returns `(features (N, D), logits (N, C) or
None)` for images in [-1, 1], and which has `num_features`, `name` and `sha256` attributes (the
digits classifier in `zoo.eval.classifier` is one).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.layout import _cache_dir

#: the neighbourhood size of the k-NN manifolds (ADM evaluator and Kynkäänniemi et al. use 3)
MANIFOLD_K = 3
#: the ADM evaluator's default KID subset size; smaller sets use all their samples per subset
KID_SUBSET_SIZE = 1000


@dataclass(frozen=True)
class Features:
    """Extracted features (N, D) and, when the extractor classifies, logits (N, C); both float64."""

    features: torch.Tensor
    logits: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.features.shape[0]


@dataclass(frozen=True)
class Protocol:
    """Everything a number depends on: without it a result is not shown (issue 8)."""

    model: str
    weights_sha256: str
    sampler: str
    steps: int
    guidance: float
    num_samples: int
    reference: str
    extractor: str
    extractor_sha256: str
    seed: int
    training_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROTOCOL_FIELDS = tuple(Protocol.__dataclass_fields__)


def has_protocol(result: dict[str, Any]) -> bool:
    """True when `result["protocol"]` names every protocol field (the leaderboard drops the others)."""
    protocol = result.get("protocol")
    required = set(PROTOCOL_FIELDS) - {"training_step"}
    return isinstance(protocol, dict) and all(protocol.get(key) not in (None, "") for key in required)


@torch.no_grad()
def extract(extractor: nn.Module, images: torch.Tensor, batch_size: int = 512) -> Features:
    """Run `extractor` over images in [-1, 1] in batches; returns float64 features (and logits)."""
    if images.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W) in [-1, 1], got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = extractor.training
    extractor.eval()
    device = next(extractor.parameters()).device
    features, logits = [], []
    try:
        for chunk in images.split(batch_size):
            chunk_features, chunk_logits = extractor(chunk.to(device=device, dtype=torch.float32))
            features.append(chunk_features.double().cpu())
            if chunk_logits is not None:
                logits.append(chunk_logits.double().cpu())
    finally:
        extractor.train(was_training)
    return Features(torch.cat(features), torch.cat(logits) if logits else None)


def extract_cached(extractor: nn.Module, images: torch.Tensor, batch_size: int = 512) -> Features:
    """`extract`, kept on disk for the next run: the reference set's features (a fixed image set through a
    fixed extractor) are the same every evaluation, and the FID Inception takes ~0.3 CPU-s per image.

    The key is the sha256 of everything the features depend on: the extractor's weights (`sha256`), the
    source of its module and of this one, the images' bytes and shape, the batch size and torch's version.
    The file is `<ZOO_CACHE or ~/.cache/dit-mtl-zoo>/features/<key>.pt`, written atomically; one that does
    not load or does not match the images is computed again and replaced."""
    digest = hashlib.sha256()
    sources = {inspect.getsourcefile(type(extractor)), __file__}
    for part in (
        str(getattr(extractor, "sha256", "")),
        *sorted(Path(f).read_text() for f in sources if f),
        str(tuple(images.shape)),
        str(images.dtype),
        str(batch_size),
        torch.__version__,
    ):
        digest.update(part.encode() + b"\0")
    digest.update(images.detach().cpu().contiguous().numpy().tobytes())
    path = _cache_dir() / "features" / f"{digest.hexdigest()}.pt"
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            features, logits = stored["features"], stored.get("logits")
            if features.dtype == torch.float64 and features.shape[0] == images.shape[0]:
                return Features(features, logits)
        except Exception as error:  # a truncated or foreign file: computed again below
            print(f"feature cache {path}: unreadable ({error}); computing again", file=sys.stderr)
    out = extract(extractor, images, batch_size=batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"features": out.features, "logits": out.logits}, partial)
    os.replace(partial, path)
    return out


class _Passthrough(nn.Module):
    """Hands precomputed float64 features to torchmetrics, so its FID/KID run in float64 end to end."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.double()


def _check_pair(real: torch.Tensor, fake: torch.Tensor, minimum: int) -> None:
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"expected features (N, D) with the same D, got {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    if real.shape[0] < minimum or fake.shape[0] < minimum:
        raise ValueError(
            f"need at least {minimum} real and fake samples, got {real.shape[0]} and {fake.shape[0]}"
        )


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (torchmetrics, float64)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    _check_pair(real, fake, minimum=2)
    metric = FrechetInceptionDistance(feature=_Passthrough(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid(
    real: torch.Tensor,
    fake: torch.Tensor,
    subsets: int = 100,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (unbiased MMD^2, cubic polynomial kernel): mean and std over subsets.

    Subsets are drawn with a fixed seed (torchmetrics draws them from the global RNG, which is
    forked here and left untouched); `subset_size` is capped at the smaller set.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    _check_pair(real, fake, minimum=2)
    size = min(subset_size, real.shape[0], fake.shape[0])
    with warnings.catch_warnings():  # its "features are kept in memory" notice: ours already are
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(
            feature=_Passthrough(real.shape[1]), subsets=subsets, subset_size=size
        )
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def _kth_neighbour_radii(points: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point of the same set."""
    radii = []
    for block in points.split(chunk):
        distances = torch.cdist(block, points)
        # the k+1 smallest include the point itself at distance 0
        radii.append(distances.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def _inside_manifold(
    queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, chunk: int
) -> torch.Tensor:
    """For each query, whether it lies in some support point's k-NN ball (distance <= radius)."""
    inside = []
    for block in queries.split(chunk):
        inside.append((torch.cdist(block, support) <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(inside)


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, k: int = MANIFOLD_K, chunk: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds, in float64.

    Precision: the fraction of fake samples inside the real manifold (the union of balls around each
    real sample reaching its k-th nearest real neighbour). Recall: the fraction of real samples inside
    the fake manifold.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    _check_pair(real, fake, minimum=k + 1)
    real, fake = real.double(), fake.double()
    real_radii = _kth_neighbour_radii(real, k, chunk)
    fake_radii = _kth_neighbour_radii(fake, k, chunk)
    precision = _inside_manifold(fake, real, real_radii, chunk).double().mean()
    recall = _inside_manifold(real, fake, fake_radii, chunk).double().mean()
    return float(precision), float(recall)


def inception_score(logits: torch.Tensor, splits: int = 1) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) from classifier logits (N, C): mean and std over `splits` parts.

    It is 1 when every prediction equals the marginal and C when predictions are confident and the
    classes are used equally.
    """
    if logits.ndim != 2 or logits.shape[0] < splits or splits < 1:
        raise ValueError(
            f"expected logits (N, C) with N >= splits >= 1, got {tuple(logits.shape)}, splits={splits}"
        )
    log_probs = torch.log_softmax(logits.double(), dim=1)
    scores = []
    for part in log_probs.tensor_split(splits):
        log_marginal = torch.logsumexp(part, dim=0) - math.log(part.shape[0])
        kl = (part.exp() * (part - log_marginal)).sum(dim=1)
        scores.append(kl.mean().exp())
    stacked = torch.stack(scores)
    return float(stacked.mean()), float(stacked.std(unbiased=False))


def class_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of samples generated for label y that the classifier assigns to y."""
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits (N, C) and labels (N,), got {tuple(logits.shape)}, {tuple(labels.shape)}"
        )
    return float((logits.argmax(dim=1) == labels.to(logits.device)).double().mean())


def compare(
    real: Features,
    fake: Features,
    fake_labels: torch.Tensor | None = None,
    seed: int = 0,
    kid_subsets: int = 100,
) -> dict[str, float]:
    """Every metric of fake against real features: FID, KID, precision, recall, and (with logits) IS and accuracy."""
    metrics: dict[str, float] = {"fid": fid(real.features, fake.features)}
    metrics["kid"], metrics["kid_std"] = kid(real.features, fake.features, subsets=kid_subsets, seed=seed)
    metrics["precision"], metrics["recall"] = precision_recall(real.features, fake.features)
    if fake.logits is not None:
        metrics["inception_score"], _ = inception_score(fake.logits)
        if fake_labels is not None:
            metrics["class_accuracy"] = class_accuracy(fake.logits, fake_labels)
    return metrics
