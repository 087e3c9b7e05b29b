"""DiT: the diffusion transformer of Peebles & Xie (ICCV 2023), with an optional per-block channel mask.

One file, top to bottom: embedders (patches, timesteps, labels, 2-D sin-cos positions), attention with
swappable backends, the adaLN-Zero block (with the routing mask of Denoising Task Routing), the final
layer, the network, and the size table with parameter / GFLOP counters. State-dict keys are those of
the original DiT, so its checkpoints load without renaming. Own code; same semantics as the original.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Mlp, PatchEmbed
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

from .registry import register_arch, register_backbone

ATTN_BACKENDS = ("sdpa", "math", "xformers")

# Sizes of the DiT paper (hidden width, depth, heads) plus a tiny T for demos and tests.
DIT_SIZES: dict[str, dict[str, int]] = {
    "T": {"hidden_size": 128, "depth": 4, "num_heads": 4},
    "S": {"hidden_size": 384, "depth": 12, "num_heads": 6},
    "B": {"hidden_size": 768, "depth": 12, "num_heads": 12},
    "L": {"hidden_size": 1024, "depth": 24, "num_heads": 16},
    "XL": {"hidden_size": 1152, "depth": 28, "num_heads": 16},
}
PATCH_SIZES = (2, 4, 8)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation of tokens x (B, N, C) by per-sample shift and scale (B, C)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


# --------------------------------------------------------------------------------------------------
# Embedders
# --------------------------------------------------------------------------------------------------


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0, freq_shift: float = 0.0) -> Tensor:
    """Sinusoidal embedding [cos(t w_k), sin(t w_k)] with w_k = max_period^(-k / (dim/2 - freq_shift)).

    freq_shift 0 is the original DiT (and GLIDE); diffusers' DiTTransformer2DModel uses 1.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    args = t[:, None].float() * torch.exp(exponent / (half - freq_shift))[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class TimestepEmbedder(nn.Module):
    """Timestep -> 256-frequency sinusoidal features -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256, freq_shift: float = 0.0):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.frequency_embedding_size = frequency_embedding_size
        self.freq_shift = freq_shift

    def forward(self, t: Tensor) -> Tensor:
        features = timestep_embedding(t, self.frequency_embedding_size, freq_shift=self.freq_shift)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class label -> vector. Row `num_classes` (present when dropout > 0) is the null class of guidance."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.has_null = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + int(self.has_null), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def forward(self, labels: Tensor, force_drop_ids: Tensor | None = None) -> Tensor:
        """Embed labels; in training, drop each to the null class with probability dropout_prob.

        force_drop_ids (B,) bool or 0/1 replaces the dropout draw (True / 1 = use the null class).
        """
        if force_drop_ids is not None:
            drop = force_drop_ids.to(device=labels.device, dtype=torch.bool)
        elif self.training and self.has_null:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            return self.embedding_table(labels)
        return self.embedding_table(torch.where(drop, self.num_classes, labels))


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding (grid_size**2, embed_dim) of MAE / DiT, in float64.

    The first half of the channels encodes the column index, the second half the row index; each half
    is [sin(p w_k), cos(p w_k)] with w_k = 10000^(-k / (embed_dim / 4)).
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be a multiple of 4 for a 2-D sin-cos embedding, got {embed_dim}")
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(positions: Tensor) -> Tensor:
        angles = positions.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1)


# --------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------


def _xformers_available() -> bool:
    return importlib.util.find_spec("xformers") is not None


_FALLBACK_WARNED: set[str] = set()


def _warn_fallback_once(reason: str) -> None:
    if reason not in _FALLBACK_WARNED:
        _FALLBACK_WARNED.add(reason)
        warnings.warn(f"attn_backend='xformers' falls back to 'sdpa': {reason}", UserWarning, stacklevel=3)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (original DiT / timm layout).

    Backends: "sdpa" (torch scaled_dot_product_attention), "math" (explicit softmax, the reference),
    "xformers" (memory-efficient attention on CUDA in fp16/bf16; otherwise sdpa, warned once).
    """

    def __init__(self, dim: int, num_heads: int, backend: str = "sdpa"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} must be divisible by num_heads={num_heads}")
        if backend not in ATTN_BACKENDS:
            raise ValueError(f"unknown attn_backend {backend!r}; expected one of {list(ATTN_BACKENDS)}")
        if backend == "xformers" and not _xformers_available():
            _warn_fallback_once("xformers is not installed")
            backend = "sdpa"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        # unbind on the qkv axis (not a permute of the fused tensor): its backward is one stack, no copy.
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.num_heads, self.head_dim).unbind(2)  # (B, N, H, D)
        backend = self.backend
        if backend == "xformers" and not (x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)):
            _warn_fallback_once("it needs CUDA tensors in float16 or bfloat16")
            backend = "sdpa"
        if backend == "xformers":
            import xformers.ops

            out = xformers.ops.memory_efficient_attention(q, k, v)
        else:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, N, D)
            if backend == "sdpa":
                out = F.scaled_dot_product_attention(q, k, v)
            else:
                weights = torch.softmax((q * self.head_dim**-0.5) @ k.transpose(-2, -1), dim=-1)
                out = weights @ v
            out = out.transpose(1, 2)
        return self.proj(out.reshape(batch, tokens, dim))


# --------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block; with a channel mask m it computes x + Block(x * m).

    The mask multiplies the block input before the LayerNorm; the attention and MLP updates are
    added to all channels and the skip carries the full x (no rescaling), as in Denoising Task
    Routing. With mask=None (or all ones) it is exactly the plain DiT block.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, attn_backend: str = "sdpa"):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, backend=attn_backend)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        tanh_gelu = partial(nn.GELU, approximate="tanh")
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), act_layer=tanh_gelu)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: Tensor, c: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, N, C) tokens, c (B, C) conditioning, mask (B, C) or None."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(
            6, dim=1
        )
        routed = x if mask is None else x * mask.unsqueeze(1)
        attn_update = gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(routed), shift_msa, scale_msa))
        hidden = routed + attn_update
        skip = hidden if mask is None else x + attn_update
        del routed, attn_update  # not held through the MLP: the forward-only peak of the original DiT
        mlp_update = gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(hidden), shift_mlp, scale_mlp))
        return skip + mlp_update


class FinalLayer(nn.Module):
    """adaLN (shift, scale) on a non-affine LayerNorm, then a linear map to patch pixels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


# --------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------


def _value_range(tensor: Tensor) -> tuple[int, int] | None:
    """(min, max) of an integer tensor in one device sync; None when empty or on the meta device."""
    if tensor.numel() == 0 or tensor.is_meta:
        return None
    low, high = torch.stack([tensor.min(), tensor.max()]).tolist()
    return int(low), int(high)


@register_arch("dit")
class DiT(nn.Module):
    """Diffusion transformer: latents (B, C, H, W), timesteps (B,), labels (B,) -> (B, out_channels, H, W).

    With learn_sigma the output holds eps in the first in_channels channels and the variance
    interpolation value in the rest. num_classes=0 builds an unconditional model (no label table).
    A router (see CONTRIBUTING.md) supplies per-block channel masks from the timesteps.
    timestep_freq_shift=1 reproduces diffusers' timestep frequencies (0 is the original DiT).
    """

    # the facts other layers read (models/registry.py)
    stem_key = "x_embedder.proj"
    head_key = "final_layer.linear"
    label_key = "y_embedder.embedding_table"
    resizable_keys = ("pos_embed",)  # fixed sin-cos: recomputed for the model's own token grid

    def fsdp_units(self) -> list[nn.Module]:
        """One FSDP unit per transformer block."""
        return list(self.blocks)

    @staticmethod
    def resolve_learn_sigma(
        kwargs: dict[str, Any], overrides: dict[str, Any], defaults: dict[str, Any]
    ) -> bool:
        """DiT states learned sigma as its own `learn_sigma` argument (default True)."""
        return bool(kwargs.get("learn_sigma", True))

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        attn_backend: str = "sdpa",
        router: Any = None,
        grad_checkpointing: bool = False,
        timestep_freq_shift: float = 0.0,
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} must be divisible by patch_size {patch_size}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = unconditional), got {num_classes}")
        if not 0.0 <= class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob must be in [0, 1), got {class_dropout_prob}")
        self.config: dict[str, Any] = {
            "input_size": input_size,
            "patch_size": patch_size,
            "in_channels": in_channels,
            "hidden_size": hidden_size,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
            "class_dropout_prob": class_dropout_prob,
            "num_classes": num_classes,
            "learn_sigma": learn_sigma,
            "attn_backend": attn_backend,
            "grad_checkpointing": grad_checkpointing,
            "timestep_freq_shift": timestep_freq_shift,
        }
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_classes = num_classes
        self.learn_sigma = learn_sigma
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.grad_checkpointing = grad_checkpointing

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size, freq_shift=timestep_freq_shift)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob) if num_classes else None
        num_patches = (input_size // patch_size) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio, attn_backend=attn_backend) for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()
        self.router: Any = None
        self.set_router(router)

    def initialize_weights(self) -> None:
        """The original DiT initialisation: xavier linears, fixed sin-cos positions, adaLN-Zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        grid = self.input_size // self.patch_size
        with torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed_2d(self.hidden_size, grid).float().unsqueeze(0))
        patch_weight = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(patch_weight.view(patch_weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def set_router(self, router: Any) -> None:
        """Install (or remove, with None) a router whose masks are (B, hidden_size) for every block."""
        if router is not None:
            self._check_router(router)
        self._modules.pop("router", None)
        self.__dict__.pop("router", None)
        self.router = router  # an nn.Module router becomes a submodule; its tables are non-persistent

    def _check_router(self, router: Any) -> None:
        if not callable(getattr(router, "mask", None)):
            raise TypeError(f"a router needs a mask(t, block=i) method; got {type(router).__name__}")
        num_blocks = getattr(router, "num_blocks", None)
        if num_blocks is not None and num_blocks != self.depth:
            raise ValueError(f"router has num_blocks={num_blocks}, expected the depth {self.depth}")
        channels = getattr(router, "channels", None)
        if channels is None:
            probe = torch.zeros(1, dtype=torch.long, device=self.pos_embed.device)
            widths = [router.mask(probe, block=i).shape[-1] for i in range(self.depth)]
        elif isinstance(channels, int):
            widths = [channels] * self.depth
        else:
            widths = list(channels)
            if len(widths) != self.depth:
                raise ValueError(
                    f"router has {len(widths)} channel widths, expected one per block ({self.depth})"
                )
        wrong = {i: w for i, w in enumerate(widths) if w != self.hidden_size}
        if wrong:
            raise ValueError(
                f"router mask widths {wrong} (block: width) must equal hidden_size={self.hidden_size}"
            )

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, N, p*p*C_out) patch tokens -> (B, C_out, H, W) image."""
        p, c = self.patch_size, self.out_channels
        grid = self.input_size // p
        x = x.reshape(x.shape[0], grid, grid, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, grid * p, grid * p)

    def _check_inputs(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor | None,
        force_drop_ids: Tensor | None,
        check_timesteps: bool = True,
        task: Tensor | None = None,
    ) -> None:
        expected = (self.in_channels, self.input_size, self.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        batch = x.shape[0]
        if t.shape != (batch,):
            raise ValueError(f"t must have shape ({batch},) (one timestep per sample), got {tuple(t.shape)}")
        num_tasks = getattr(self.router, "num_tasks", None)
        if task is not None:
            if self.router is None:
                raise ValueError("task= selects routing masks, but this model has no router")
            if task.shape != (batch,) or task.is_floating_point():
                raise ValueError(
                    f"task must be an integer tensor of shape ({batch},), got {task.dtype} {tuple(task.shape)}"
                )
        routed = t if task is None else task
        if self.router is not None and routed.is_floating_point():
            raise TypeError(
                f"with a router, t must hold integer timestep indices (or pass task= with continuous t), "
                f"got dtype {t.dtype}"
            )
        t_range = _value_range(routed) if num_tasks is not None and check_timesteps else None
        if t_range is not None and (t_range[0] < 0 or t_range[1] >= num_tasks):
            raise ValueError(
                f"timesteps must lie in [0, {num_tasks - 1}] (router num_tasks={num_tasks}), "
                f"got range [{t_range[0]}, {t_range[1]}]"
            )
        if self.y_embedder is None:
            if y is not None or force_drop_ids is not None:
                raise ValueError(
                    "this model is unconditional (num_classes=0): y and force_drop_ids must be None"
                )
            return
        if force_drop_ids is not None and not self.y_embedder.has_null:
            raise ValueError("force_drop_ids needs a null class; this model has class_dropout_prob=0")
        if force_drop_ids is not None and force_drop_ids.shape != (batch,):
            raise ValueError(f"force_drop_ids must have shape ({batch},), got {tuple(force_drop_ids.shape)}")
        if y is None:
            return
        if y.shape != (batch,) or y.is_floating_point():
            raise ValueError(
                f"y must be an integer tensor of shape ({batch},), got {y.dtype} {tuple(y.shape)}"
            )
        top = self.num_classes if self.y_embedder.has_null else self.num_classes - 1
        y_range = _value_range(y)
        if y_range is not None and (y_range[0] < 0 or y_range[1] > top):
            null = f" ({self.num_classes} = null class)" if self.y_embedder.has_null else ""
            raise ValueError(f"labels must lie in [0, {top}]{null}, got range [{y_range[0]}, {y_range[1]}]")

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor | None = None,
        force_drop_ids: Tensor | None = None,
        check_timesteps: bool = True,
        task: Tensor | None = None,
    ) -> Tensor:
        """Predict (B, out_channels, H, W) from noisy x, ORIGINAL timestep indices t and labels y.

        For a conditional model y=None means the null class (an unconditional prediction);
        force_drop_ids (B,) replaces chosen labels by the null class (classifier-free guidance).
        check_timesteps=False skips the range check of t (one device sync per forward, here and in
        the router), for a caller that validated its timesteps once (zoo's DiffusionModel does).
        `task` (B,) long selects the routing masks when t is not a task index (the flow process feeds
        continuous time t in [0, 1], as SiT does, and the task of that time); default: t itself.
        """
        self._check_inputs(x, t, y, force_drop_ids, check_timesteps, task)
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            if y is None:
                if not self.y_embedder.has_null:
                    raise ValueError("y is required: this model has no null class (class_dropout_prob=0)")
                y = torch.full_like(t, self.num_classes, dtype=torch.long)
            c = c + self.y_embedder(y, force_drop_ids)
        # Patchify yields a transposed (B, N, C) view; one copy to row-major keeps LayerNorm copy-free,
        # and the positions are added into that copy (no second token tensor beside it). A clone, not
        # .contiguous(), so the in-place add never touches the patch projection's own output.
        tokens = self.x_embedder(x).clone(memory_format=torch.contiguous_format)
        if tokens.dtype == self.pos_embed.dtype:
            tokens.add_(self.pos_embed)
        else:  # autocast: the sum promotes, as the out-of-place add of the original DiT does
            tokens = tokens + self.pos_embed
        checkpointing = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        # the router checks t itself unless the caller validated it (a router's own mask() may not offer it)
        unchecked = {} if check_timesteps else {"check_timesteps": False}
        routed = t if task is None else task
        for i, block in enumerate(self.blocks):
            mask = (
                None
                if self.router is None
                else self.router.mask(routed, block=i, **unchecked).to(tokens.dtype)
            )
            if checkpointing:
                tokens = checkpoint(block, tokens, c, mask, use_reentrant=False)
            else:
                tokens = block(tokens, c, mask)
        return self.unpatchify(self.final_layer(tokens, c))


# --------------------------------------------------------------------------------------------------
# Sizes, parameter counts and GFLOPs
# --------------------------------------------------------------------------------------------------


def dit_config(size: str, patch_size: int = 2, **overrides: Any) -> dict[str, Any]:
    """Constructor kwargs of DiT-{size}/{patch_size}, e.g. dit_config("XL", 2); overrides win."""
    if size not in DIT_SIZES:
        raise ValueError(f"unknown DiT size {size!r}; expected one of {list(DIT_SIZES)}")
    if patch_size not in PATCH_SIZES:
        raise ValueError(f"unknown patch size {patch_size}; expected one of {list(PATCH_SIZES)}")
    return {**DIT_SIZES[size], "patch_size": patch_size, **overrides}


def count_params(net: nn.Module) -> int:
    """All parameters, the fixed position embedding included (as the DiT paper counts)."""
    return sum(p.numel() for p in net.parameters())


def gflops(net_or_config: DiT | Mapping[str, Any]) -> float:
    """Multiply-adds (in units of 1e9) of one forward of one sample, as the DiT paper counts them.

    Counted by torch's FlopCounterMode (matmuls, convolutions, attention) on a meta-device twin,
    so it is free for any size; the counter reports 2 flops per multiply-add, hence the halving.
    """
    config = dict(net_or_config.config if isinstance(net_or_config, DiT) else net_or_config)
    config["attn_backend"] = "math"  # plain matmuls: counted identically on every device
    with torch.device("meta"):
        twin = DiT(**config).eval()
        x = torch.zeros(1, twin.in_channels, twin.input_size, twin.input_size)
        t = torch.zeros(1, dtype=torch.long)
        y = torch.zeros(1, dtype=torch.long) if twin.num_classes else None
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        twin(x, t, y)
    return counter.get_total_flops() / 2 / 1e9


def _register_dit(size: str, patch: int) -> None:
    name = f"dit_{size.lower()}" if patch == 2 else f"dit_{size.lower()}_p{patch}"

    @register_backbone(name)
    def _entry() -> dict[str, Any]:
        kwargs = {"input_size": 32, "patch_size": patch, "in_channels": 4, "num_classes": 1000}
        return {"arch": "dit", "kwargs": {**kwargs, **DIT_SIZES[size]}}


def _register_sit(size: str, patch: int) -> None:
    name = f"sit_{size.lower()}" if patch == 2 else f"sit_{size.lower()}_p{patch}"

    @register_backbone(name)
    def _entry() -> dict[str, Any]:
        kwargs = {"input_size": 32, "patch_size": patch, "in_channels": 4, "num_classes": 1000}
        # SiT = the DiT network trained with the flow process: velocity only (no learned sigma)
        return {
            "arch": "dit",
            "kwargs": {**kwargs, **DIT_SIZES[size], "learn_sigma": False},
            "process": "flow",
        }


# DiT-{T,S,B,L,XL}/{2,4,8} for 32x32x4 latents and 1,000 classes: dit_s, dit_s_p4, dit_xl_p8, ...;
# SiT-{T,S,B,L,XL}/{2,4,8} the same networks with the flow process: sit_s, sit_xl_p8, ...
for _size in DIT_SIZES:
    for _patch in PATCH_SIZES:
        _register_dit(_size, _patch)
        _register_sit(_size, _patch)
