"""Sampling outputs: grid layout, uint8 rounding, ADM NPZ layout, per-image PNGs, labels and `zoo sample`."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo.data.images import make_grid, save_grid, save_images, save_npz, to_uint8
from zoo.eval.sampling import add_sample_arguments, main_from_args, parse_labels


def test_to_uint8_matches_a_float64_rederivation():
    levels = torch.randint(-20, 276, (2, 3, 4, 5), generator=torch.Generator().manual_seed(0)).double()
    offsets = (
        torch.rand(levels.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.8 - 0.4
    )
    images = ((levels + offsets) / 127.5 - 1.0).float()  # 0.1 level away from every rounding tie
    expected = levels.clamp(0, 255).numpy().astype(np.uint8).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(to_uint8(images), expected)
    with pytest.raises(ValueError, match="C 1 or 3"):
        to_uint8(torch.zeros(1, 2, 4, 4))


def test_grid_places_every_image_at_its_row_and_column(tmp_path):
    images = torch.stack([torch.full((3, 4, 5), -1.0 + 0.2 * i) for i in range(7)])
    grid = make_grid(images, nrow=3, padding=2)
    assert grid.shape == (3 * 6 + 2, 3 * 7 + 2, 3)
    pixels = to_uint8(images)
    for index in range(7):
        row, column = divmod(index, 3)
        top, left = 2 + row * 6, 2 + column * 7
        np.testing.assert_array_equal(grid[top : top + 4, left : left + 5], pixels[index])
    assert grid[:2].max() == 0 and grid[2 + 2 * 6 :, 2 + 7 :].max() == 0  # padding and the empty cells
    path = save_grid(images[:, :1], tmp_path / "g" / "grid.png", nrow=3, upscale=2)
    with Image.open(path) as saved:
        assert saved.mode == "L" and saved.size == (2 * (3 * 7 + 2), 2 * (3 * 6 + 2))


def test_npz_and_per_image_files(tmp_path):
    images = torch.rand(3, 1, 4, 4) * 2 - 1
    path = save_npz(images, tmp_path / "samples.npz")
    with np.load(path) as archive:
        arr = archive["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (3, 4, 4, 3)
    np.testing.assert_array_equal(arr, np.repeat(to_uint8(images), 3, axis=-1))
    paths = save_images(images, tmp_path / "each", start=5)
    assert [p.name for p in paths] == ["000005.png", "000006.png", "000007.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(paths[1])), to_uint8(images)[1, ..., 0])
    with pytest.raises(ValueError, match="uint8"):
        save_npz(np.zeros((2, 4, 4, 3), dtype=np.float32), tmp_path / "bad.npz")


def test_parse_labels():
    generator = torch.Generator().manual_seed(0)
    assert parse_labels("0,1,2", 7, 10, generator).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert parse_labels("none", 4, 10, generator) is None
    drawn = parse_labels("random", 500, 10, generator)
    assert drawn.shape == (500,) and set(drawn.tolist()) == set(range(10))
    with pytest.raises(ValueError, match=r"labels \[10\] out of range; expected 0..9"):
        parse_labels("3,10", 4, 10, generator)
    with pytest.raises(ValueError, match="comma-separated integers"):
        parse_labels("cat", 4, 10, generator)
    with pytest.raises(ValueError, match="unconditional"):
        parse_labels("0", 4, 0, generator)


def test_sample_command_writes_grid_npz_and_pngs_reproducibly(tmp_path, capsys):
    model = zoo.create(
        "dit_t", input_size=8, in_channels=1, num_classes=10, hidden_size=32, depth=2, num_heads=2
    )
    model.save_pretrained(tmp_path / "model")
    parser = add_sample_arguments(argparse.ArgumentParser())
    outputs = []
    for run in ("a", "b"):
        args = parser.parse_args(
            [
                f"local-dir:{tmp_path / 'model'}",
                "--n",
                "5",
                "--labels",
                "0,1",
                "--steps",
                "3",
                "--batch",
                "2",
                "--cfg",
                "1.5",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / run / "grid.png"),
                "--npz",
                str(tmp_path / run / "s.npz"),
                "--outdir",
                str(tmp_path / run / "each"),
                "--no-progress",
            ]
        )
        assert main_from_args(args) == 0
        with np.load(tmp_path / run / "s.npz") as archive:
            outputs.append(archive["arr_0"])
    assert outputs[0].shape == (5, 8, 8, 3) and np.array_equal(outputs[0], outputs[1])
    assert len(list((tmp_path / "a" / "each").glob("*.png"))) == 5
    assert (tmp_path / "a" / "grid.png").is_file() and "sampled 5 images" in capsys.readouterr().out
    # the batched command draws what model.sample draws, batch by batch, from one seeded generator
    generator = torch.Generator().manual_seed(0)
    first = model.sample(torch.tensor([0, 1]), steps=3, guidance=1.5, generator=generator)
    np.testing.assert_array_equal(np.repeat(to_uint8(first.clamp(-1, 1)), 3, axis=-1), outputs[0][:2])
