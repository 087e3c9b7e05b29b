"""The ADM U-Net of "Diffusion Models Beat GANs on Image Synthesis" (Dhariwal & Nichol, 2021), own code.

Argument names and state-dict keys follow the public guided-diffusion `UNetModel`, so its released
checkpoints load with no renaming (`time_embed.*`, `label_emb.*`, `input_blocks.*`, `middle_block.*`,
`output_blocks.*`, `out.*`). The network reads top to bottom:

- timestep embedding: sinusoid of `model_channels` (cos half first) -> Linear(4x) -> SiLU -> Linear;
  a class embedding (4x wide) is added to it for conditional models;
- residual blocks: GroupNorm(32, float32) -> SiLU -> conv, embedding injected by addition or, with
  `use_scale_shift_norm`, as `norm(h) * (1 + scale) + shift`, then SiLU -> dropout -> zero-initialised conv;
  up/down-sampling either by separate blocks (conv or pooling) or inside residual blocks (`resblock_updown`);
- multi-head self-attention at the chosen DOWNSAMPLE RATES (`attention_resolutions = image_size // res`,
  as guided-diffusion's scripts convert resolutions), with `num_heads` or `num_head_channels`;
- encoder levels with `channel_mult`, a middle block (res, attention, res), a decoder with skip
  concatenations, and GroupNorm -> SiLU -> zero-initialised conv out (a fresh model outputs zeros).

ATTENTION ORDER, READ THIS BEFORE LOADING RELEASED WEIGHTS. The `qkv` projection produces 3*C channels
that two attention variants read differently, with identical weight shapes:
- `use_new_attention_order=True` (`QKVAttention`): split q, k, v first, then each into heads;
  the released 64x64 ImageNet model uses this order;
- `use_new_attention_order=False` (`QKVAttentionLegacy`, the default): split into heads first, then each
  head's slice into q, k, v; the released 128/256/512 and LSUN models use this order.
A checkpoint loaded with the wrong order raises NO error and produces garbage. Always copy the flag from
the checkpoint's published configuration.

Classifier-free guidance: guided-diffusion's conditional models have NO null class (they were trained for
classifier guidance). A null label (index `num_classes`) exists only when `class_dropout_prob > 0`: one
extra embedding row is added and training-mode forwards drop labels to it with that probability. With the
default `class_dropout_prob=0` the key shapes are those of the released checkpoints.

Denoising Task Routing: every residual block `i` (in the order documented on `ADMUNet.router_channels`)
multiplies its input by `router.mask(t, block=i)` (per channel, broadcast over H, W) before its residual
branch, while the skip path keeps the full input: `skip(x) + F(x * m)`.

Sizes (`adm_config(name)`; parameter counts measured by `benchmarks/bench_adm.py`):

| name | image | channels | res blocks | mult | attention at (resolution) | heads | classes | params |
|---|---|---|---|---|---|---|---|---|
| `adm_t` | 8, 1 ch | 32 | 1 | 1,2 | 4 | 16 ch/head | 10 (+null) | 828,034 |
| `adm_64` | 64 | 192 | 3 | 1,2,3,4 | 32,16,8 | 64 ch/head | 1000 | 295,904,454 |
| `adm_256` | 256 | 256 | 2 | 1,1,2,2,4,4 | 32,16,8 | 64 ch/head | none | 552,814,086 |
| `adm_ffhq` | 256 | 128 | 1 | 1,1,2,2,4,4 | 16 | 64 ch/head | none | 93,563,910 |

`adm_64` is the released ImageNet 64x64 conditional model (scale-shift norm, learned sigma, resblock
up/down, new attention order, dropout 0.1; trained with the cosine schedule). `adm_256` is the layout of
the released 256x256 models: unconditional as registered, `num_classes=1000` gives the conditional
release (553,838,086 parameters); legacy attention order; trained with the linear schedule. `adm_ffhq` is
an ADM-style unconditional 256 configuration for FFHQ / CelebA-HQ: the lightweight ADM of P2 weighting
(Choi et al., 2022), which ANT's ADM experiments appear to follow (ANT released no U-Net code, so this
could not be checked against it).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .registry import register_arch, register_backbone

__all__ = [
    "ADM_CONFIGS",
    "ADMUNet",
    "AttentionBlock",
    "GroupNorm32",
    "QKVAttention",
    "QKVAttentionLegacy",
    "ResBlock",
    "adm_config",
    "attention_downsample_rates",
    "timestep_embedding",
]


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups computed in float32 (stable under fp16/bf16), cast back to the input dtype."""

    def __init__(self, channels: int) -> None:
        if channels % 32:
            raise ValueError(f"GroupNorm32 needs a channel count divisible by 32, got {channels}")
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of timesteps t (B,): [cos(t f_k), sin(t f_k)], f_k = max_period^(-k/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def _zero(module: nn.Module) -> nn.Module:
    """Zero a module's parameters (output convs start as the identity of their residual branch)."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv (key `conv`) when `use_conv`."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """x1/2 by a stride-2 3x3 conv when `use_conv`, else 2x2 average pooling (key `op` either way)."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block with timestep-embedding injection, optional up/down-sampling and a routing mask.

    `forward(x, emb, mask)` returns `skip(x) + F(x * mask)`: the mask (B, channels) gates the residual
    branch's input per channel while the skip keeps the full input; `mask=None` is the plain block.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("a ResBlock samples up or down, not both")
        self.channels = channels
        self.out_channels = out_channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.route_index = -1  # position in routing order, set by ADMUNet
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.in_layers[0](x if mask is None else x * mask.to(x.dtype)[:, :, None, None])
        h = self.in_layers[1](h)
        if self.updown:
            h = self.in_layers[2](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers[2](h)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q^T k / sqrt(d)) over (B, heads, d, T) channel-first tensors; returns (B, heads*d, T)."""
    batch, heads, head_dim, length = q.shape
    out = F.scaled_dot_product_attention(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3))
    return out.transpose(2, 3).reshape(batch, heads * head_dim, length)


class QKVAttention(nn.Module):
    """New order: qkv (B, 3*H*d, T) is split into q, k, v first, then each into H heads of d channels."""

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        batch, width, length = qkv.shape
        head_dim = width // (3 * self.num_heads)
        q, k, v = (part.reshape(batch, self.num_heads, head_dim, length) for part in qkv.chunk(3, dim=1))
        return _attend(q, k, v)


class QKVAttentionLegacy(nn.Module):
    """Legacy order: qkv (B, H*3*d, T) is split into H heads first, then each head's 3*d rows into q, k, v."""

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        batch, width, length = qkv.shape
        head_dim = width // (3 * self.num_heads)
        q, k, v = qkv.reshape(batch, self.num_heads, 3 * head_dim, length).split(head_dim, dim=2)
        return _attend(q, k, v)


class AttentionBlock(nn.Module):
    """Self-attention over all positions: x + proj_out(attention(qkv(norm(x)))), 1x1 Conv1d projections."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_new_attention_order: bool = False,
    ) -> None:
        super().__init__()
        if num_head_channels == -1:
            if channels % num_heads:
                raise ValueError(f"channels {channels} are not divisible by num_heads {num_heads}")
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(
                    f"channels {channels} are not divisible by num_head_channels {num_head_channels}"
                )
            self.num_heads = channels // num_head_channels
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        order = QKVAttention if use_new_attention_order else QKVAttentionLegacy
        self.attention = order(self.num_heads)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, *spatial = x.shape
        x = x.reshape(batch, channels, -1)
        h = self.proj_out(self.attention(self.qkv(self.norm(x))))
        return (x + h).reshape(batch, channels, *spatial)


class TimestepEmbedSequential(nn.Sequential):
    """A sequence of layers; residual blocks also receive the embedding and their routing mask."""

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, masks: list[torch.Tensor] | None, use_checkpoint: bool
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                mask = None if masks is None else masks[layer.route_index]
                x = (
                    checkpoint(layer, x, emb, mask, use_reentrant=False)
                    if use_checkpoint
                    else layer(x, emb, mask)
                )
            elif isinstance(layer, AttentionBlock) and use_checkpoint:
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return x


def attention_downsample_rates(image_size: int, resolutions: Sequence[int]) -> tuple[int, ...]:
    """Convert attention resolutions (e.g. 32,16,8 at 64) to the downsample rates `ADMUNet` takes (2,4,8)."""
    rates = []
    for resolution in resolutions:
        if resolution <= 0 or image_size % resolution:
            raise ValueError(f"attention resolution {resolution} does not divide image_size {image_size}")
        rates.append(image_size // resolution)
    return tuple(rates)


@register_arch("adm")
class ADMUNet(nn.Module):
    """The guided-diffusion U-Net (same arguments and state-dict keys), with optional DTR routing.

    `forward(x, t, y=None)`: x (B, in_channels, image_size, image_size), t (B,) ORIGINAL timestep indices,
    y (B,) labels for conditional models (None for unconditional ones); returns (B, out_channels, H, W).
    `attention_resolutions` are DOWNSAMPLE RATES (1 = full resolution). `use_new_attention_order` must match
    the checkpoint (see the module docstring: the wrong order loads silently and gives garbage).
    `class_dropout_prob > 0` adds a null class (index `num_classes`) for classifier-free guidance.
    """

    # the facts other layers read (models/registry.py)
    stem_key = "input_blocks.0.0"
    head_key = "out.2"
    label_key = "label_emb"
    resizable_keys = ()

    def fsdp_units(self) -> list[nn.Module]:
        """One FSDP unit per residual and attention block."""
        return [module for module in self.modules() if isinstance(module, (ResBlock, AttentionBlock))]

    @staticmethod
    def resolve_learn_sigma(
        kwargs: dict[str, Any], overrides: dict[str, Any], defaults: dict[str, Any]
    ) -> bool:
        """guided-diffusion states learned sigma through its output width (2 x in_channels): a
        `learn_sigma` override sets out_channels; a new in_channels keeps the size's choice."""
        if "learn_sigma" in kwargs:
            sigma = bool(kwargs.pop("learn_sigma"))
            kwargs["out_channels"] = kwargs["in_channels"] * (2 if sigma else 1)
        elif "in_channels" in overrides and "out_channels" not in overrides:
            sigma = defaults["out_channels"] == 2 * defaults["in_channels"]
            kwargs["out_channels"] = kwargs["in_channels"] * (2 if sigma else 1)
        return kwargs["out_channels"] == 2 * kwargs["in_channels"]

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        num_classes: int | None = None,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        conv_resample: bool = True,
        use_checkpoint: bool = False,
        class_dropout_prob: float = 0.0,
        router: Any = None,
    ) -> None:
        super().__init__()
        num_levels = len(channel_mult)
        if num_levels == 0 or num_res_blocks < 1:
            raise ValueError(
                f"need at least one level and one res block, got {channel_mult=}, {num_res_blocks=}"
            )
        if image_size % 2 ** (num_levels - 1):
            raise ValueError(
                f"image_size {image_size} must be divisible by 2**(levels - 1) = {2 ** (num_levels - 1)}"
            )
        reachable = [2**level for level in range(num_levels)]
        unreachable = sorted(set(attention_resolutions) - set(reachable))
        if unreachable:
            raise ValueError(
                f"attention_resolutions are downsample rates; {unreachable} not among this U-Net's {reachable} "
                f"(convert resolutions with attention_downsample_rates(image_size, resolutions))"
            )
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be None (unconditional) or >= 1, got {num_classes}")
        if not 0.0 <= class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob must be in [0, 1), got {class_dropout_prob}")
        if class_dropout_prob > 0 and num_classes is None:
            raise ValueError("class_dropout_prob > 0 needs a conditional model (num_classes set)")
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads

        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_classes = num_classes or 0
        self.class_dropout_prob = class_dropout_prob
        self.use_checkpoint = use_checkpoint
        emb_dim = 4 * model_channels

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes + (class_dropout_prob > 0), emb_dim)

        resblocks: list[ResBlock] = []

        def res(channels: int, out: int, **kwargs: bool) -> ResBlock:
            block = ResBlock(channels, emb_dim, dropout, out, use_scale_shift_norm, **kwargs)
            block.route_index = len(resblocks)
            resblocks.append(block)
            return block

        def attention(channels: int, heads: int) -> AttentionBlock:
            return AttentionBlock(channels, heads, num_head_channels, use_new_attention_order)

        ch = int(channel_mult[0] * model_channels)
        first_ch = ch
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attention(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != num_levels - 1:
                sampler = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample)
                self.input_blocks.append(TimestepEmbedSequential(sampler))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(res(ch, ch), attention(ch, num_heads), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for index in range(num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attention(ch, num_heads_upsample))
                if level and index == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(ch), nn.SiLU(), _zero(nn.Conv2d(first_ch, out_channels, 3, padding=1))
        )
        self._router_channels = [block.channels for block in resblocks]
        self.router = None
        self.set_router(router)

    @property
    def learn_sigma(self) -> bool:
        """True when the output holds eps then the variance values (out_channels == 2 * in_channels)."""
        return self.out_channels == 2 * self.in_channels

    @property
    def has_null_class(self) -> bool:
        """Whether label `num_classes` (the guidance null label) exists: only with class_dropout_prob > 0."""
        return self.class_dropout_prob > 0

    def router_channels(self) -> list[int]:
        """Input width of every residual block, in routing order: block i gets `router.mask(t, block=i)`.

        Order: the ResBlocks of `input_blocks` (including down-sampling ones) in order, then the two of
        `middle_block`, then those of `output_blocks` (including up-sampling ones) in order.
        """
        return list(self._router_channels)

    def set_router(self, router: Any) -> None:
        """Install (or remove, with None) a router; its tables are non-persistent, so the state dict is unchanged."""
        if router is not None and not callable(getattr(router, "mask", None)):
            raise TypeError(f"a router needs a mask(t, block=i) method, got {type(router).__name__}")
        self._modules.pop("router", None)
        self.__dict__.pop("router", None)
        self.router = router

    def _masks(self, t: torch.Tensor) -> list[torch.Tensor] | None:
        if self.router is None:
            return None
        masks = []
        for block, width in enumerate(self._router_channels):
            mask = self.router.mask(t, block=block)
            if mask.shape != (t.shape[0], width):
                raise ValueError(
                    f"router.mask(t, block={block}) must have shape ({t.shape[0]}, {width}) "
                    f"(see router_channels()), got {tuple(mask.shape)}"
                )
            masks.append(mask)
        return masks

    def _label_embedding(self, y: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if self.num_classes == 0:
            if y is not None:
                raise ValueError("this ADMUNet is unconditional (num_classes=None); pass y=None")
            return None
        if y is None:
            raise ValueError(
                f"this ADMUNet is class-conditional ({self.num_classes} classes); pass labels y (B,)"
            )
        if y.shape != (batch,) or y.is_floating_point():
            raise ValueError(
                f"y must be an integer tensor of shape ({batch},), got {y.dtype} {tuple(y.shape)}"
            )
        top = self.num_classes if self.has_null_class else self.num_classes - 1
        if bool(((y < 0) | (y > top)).any()):
            null_note = (
                f" (label {self.num_classes} is the null class)"
                if self.has_null_class
                else " (no null class: build with class_dropout_prob > 0 for classifier-free guidance)"
            )
            raise ValueError(f"labels must lie in [0, {top}]{null_note}, got {y.tolist()}")
        if self.training and self.has_null_class:
            drop = torch.rand(batch, device=y.device) < self.class_dropout_prob
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return self.label_emb(y)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict (B, out_channels, H, W) from noisy images x, timestep indices t and labels y."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        batch = x.shape[0]
        if t.shape != (batch,):
            raise ValueError(f"t must have shape ({batch},), got {tuple(t.shape)}")
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(self.time_embed[0].weight.dtype))
        label = self._label_embedding(y, batch)
        if label is not None:
            emb = emb + label
        masks = self._masks(t)
        use_checkpoint = self.use_checkpoint and self.training and torch.is_grad_enabled()

        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, masks, use_checkpoint)
            skips.append(h)
        h = self.middle_block(h, emb, masks, use_checkpoint)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, masks, use_checkpoint)
        return self.out(h)


ADM_CONFIGS: dict[str, dict[str, Any]] = {
    "adm_t": dict(
        image_size=8, in_channels=1, model_channels=32, out_channels=2, num_res_blocks=1,
        attention_resolutions=(2,), dropout=0.0, channel_mult=(1, 2), num_classes=10,
        num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True,
        use_new_attention_order=True, class_dropout_prob=0.1,
    ),
    "adm_64": dict(
        image_size=64, in_channels=3, model_channels=192, out_channels=6, num_res_blocks=3,
        attention_resolutions=(2, 4, 8), dropout=0.1, channel_mult=(1, 2, 3, 4), num_classes=1000,
        num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True,
        use_new_attention_order=True,
    ),
    "adm_256": dict(
        image_size=256, in_channels=3, model_channels=256, out_channels=6, num_res_blocks=2,
        attention_resolutions=(8, 16, 32), dropout=0.0, channel_mult=(1, 1, 2, 2, 4, 4), num_classes=None,
        num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True,
        use_new_attention_order=False,
    ),
    "adm_ffhq": dict(
        image_size=256, in_channels=3, model_channels=128, out_channels=6, num_res_blocks=1,
        attention_resolutions=(16,), dropout=0.0, channel_mult=(1, 1, 2, 2, 4, 4), num_classes=None,
        num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True,
        use_new_attention_order=False,
    ),
}  # fmt: skip


def adm_config(name: str, **overrides: Any) -> dict[str, Any]:
    """Constructor arguments of a named ADM size (see the table above), with overrides applied."""
    if name not in ADM_CONFIGS:
        raise KeyError(f"unknown ADM size {name!r}; expected one of {sorted(ADM_CONFIGS)}")
    unknown = sorted(set(overrides) - set(inspect.signature(ADMUNet).parameters))
    if unknown:
        raise TypeError(f"unknown ADMUNet arguments {unknown}")
    return {**ADM_CONFIGS[name], **overrides}


def _register_adm(name: str) -> None:
    @register_backbone(name)
    def _entry() -> dict[str, Any]:
        return {"arch": "adm", "kwargs": adm_config(name)}


for _name in ADM_CONFIGS:
    _register_adm(_name)
