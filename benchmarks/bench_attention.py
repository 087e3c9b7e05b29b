"""Attention backends of models.dit.Attention: torch SDPA against the explicit-softmax reference.

DiT-S/2 and DiT-L/2 widths at the token counts of 256px (32x32 latents: 256 tokens) and 512px
(64x64 latents: 1024 tokens), batch 8: forward and forward+backward time ratio and peak memory.
"""

from __future__ import annotations

import torch
from zoo.models.dit import DIT_SIZES, Attention

from benchmarks.common import report, side_by_side

BATCH = 8


def _forward(module, x):
    def call():
        with torch.no_grad():
            module(x)

    return call


def _train_step(module, x):
    def call():
        module(x).square().mean().backward()

    return call


def run(quick: bool = False) -> dict:
    """Time sdpa vs math attention; print the table and save JSON."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    repeats = 3 if quick else 10
    token_counts = (256,) if quick else (256, 1024)
    rows = []
    for size in ("S", "L"):
        hidden, heads = DIT_SIZES[size]["hidden_size"], DIT_SIZES[size]["num_heads"]
        torch.manual_seed(0)
        sdpa = Attention(hidden, heads, backend="sdpa").to(device)
        math = Attention(hidden, heads, backend="math").to(device)
        math.load_state_dict(sdpa.state_dict())
        for tokens in token_counts:
            x = torch.randn(BATCH, tokens, hidden, device=device, requires_grad=True)
            with torch.no_grad():
                max_diff = (sdpa(x) - math(x)).abs().max().item()
            for mode, make in (("forward", _forward), ("forward+backward", _train_step)):
                candidates = {"sdpa": make(sdpa, x), "math": make(math, x)}
                pair = side_by_side(candidates, repeats=repeats, warmup=1 if quick else 2)
                rows.append(
                    {
                        "width": f"DiT-{size} ({hidden}/{heads}h)",
                        "tokens": tokens,
                        "mode": mode,
                        **pair,
                        "max_abs_diff": max_diff,
                    }
                )
    return report(
        "attention",
        f"Attention: sdpa vs math, batch {BATCH}, {device.type} (ratio < 1: sdpa faster)",
        rows,
        device=str(device),
        repeats=repeats,
    )


if __name__ == "__main__":
    run()
