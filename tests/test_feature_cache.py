"""The on-disk cache of reference features (zoo.eval.metrics.extract_cached): the leaderboard's Inception
reference costs ~0.3 CPU-s per image and is the same every run. A cached result must be bit for bit what
`extract` computes, never served for other images, weights or batch size, and a broken file is recomputed."""

import torch
from torch import nn

from zoo.eval import metrics


class Counting(nn.Module):
    """A small extractor that counts its forwards: features and logits of flattened images."""

    def __init__(self, sha256: str = "weights-a") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(16, 6)
        self.sha256 = sha256
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        features = torch.tanh(self.body(x.flatten(1)))
        return features, features[:, :3] * 2


def images(seed: int, n: int = 10) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def cached_files(tmp_path):
    return sorted((tmp_path / "features").glob("*.pt"))


def test_the_cache_serves_exactly_what_extract_computes_and_only_for_the_same_inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    extractor, reference = Counting(), images(0)
    fresh = metrics.extract(extractor, reference, batch_size=4)
    extractor.calls = 0
    first = metrics.extract_cached(extractor, reference, batch_size=4)
    assert extractor.calls == 3 and len(cached_files(tmp_path)) == 1  # 10 images in batches of 4
    again = metrics.extract_cached(extractor, reference, batch_size=4)
    assert extractor.calls == 3  # read from disk, the extractor not run
    for out in (first, again):
        assert torch.equal(out.features, fresh.features) and torch.equal(out.logits, fresh.logits)
        assert out.features.dtype == torch.float64
    # other images, other weights, another batch size: each its own entry, computed
    for call in (
        lambda: metrics.extract_cached(extractor, images(1), batch_size=4),
        lambda: metrics.extract_cached(Counting("weights-b"), reference, batch_size=4),
        lambda: metrics.extract_cached(extractor, reference, batch_size=5),
    ):
        before = len(cached_files(tmp_path))
        call()
        assert len(cached_files(tmp_path)) == before + 1
    other = metrics.extract_cached(extractor, images(1), batch_size=4)
    assert not torch.equal(other.features, fresh.features)


def test_a_broken_cache_file_is_computed_again_and_replaced(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    extractor, reference = Counting(), images(0)
    expected = metrics.extract_cached(extractor, reference, batch_size=4)
    (path,) = cached_files(tmp_path)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    extractor.calls = 0
    out = metrics.extract_cached(extractor, reference, batch_size=4)
    assert extractor.calls == 3 and torch.equal(out.features, expected.features)
    assert "unreadable" in capsys.readouterr().err
    extractor.calls = 0
    metrics.extract_cached(extractor, reference, batch_size=4)
    assert extractor.calls == 0  # the replaced file serves the next run
    assert not list((tmp_path / "features").glob("*.tmp"))
