"""Our DiT against diffusers' DiTTransformer2DModel holding the same converted weights.

Tiny and S/2 at 32x32x4, batch 8: forward and forward+backward, interleaved timings (time ratio
ours / diffusers, target <= 1.0) and peak memory, after checking both give the same output to 1e-5.
"""

from __future__ import annotations

import time

import torch
from zoo.models.dit import DiT, dit_config

from benchmarks.common import report, side_by_side
from zoo.hub.convert import diffusers_config_from_dit, dit_to_diffusers

BATCH = 8


def _pair(size: str, device: torch.device):
    """Our DiT with random (non-zero) weights and a diffusers twin loaded from its converted state dict."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    config = dit_config(size, 2, timestep_freq_shift=1.0)  # diffusers' timestep spacing, for exact parity
    ours = DiT(**config)
    with torch.no_grad():
        for name, param in ours.named_parameters():
            if name != "pos_embed":
                param.normal_(0.0, 0.02)
    theirs = DiTTransformer2DModel(**diffusers_config_from_dit(ours.config))
    theirs.load_state_dict(dit_to_diffusers(ours.state_dict()), strict=True)
    return ours.to(device).eval(), theirs.to(device).eval()


def _forward(net, unwrap, inputs):
    def call():
        with torch.no_grad():
            unwrap(net(*inputs))

    return call


def _train_step(net, unwrap, inputs):
    def call():
        net.zero_grad(set_to_none=True)
        unwrap(net(*inputs)).square().mean().backward()

    return call


def run(quick: bool = False) -> dict:
    """Time ours vs diffusers for DiT-T/2 and DiT-S/2; print the table and save JSON."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    repeats = 3 if quick else 10
    rows = []
    for size in ("T", "S"):
        ours, theirs = _pair(size, device)
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(BATCH, 4, 32, 32, generator=generator).to(device)
        t = torch.randint(0, 1000, (BATCH,), generator=generator).to(device)
        y = torch.randint(0, 1000, (BATCH,), generator=generator).to(device)
        with torch.no_grad():
            max_diff = (ours(x, t, y) - theirs(x, t, y).sample).abs().max().item()
        if max_diff > 1e-5:
            raise AssertionError(f"DiT-{size}/2 outputs differ from diffusers by {max_diff:.2e} (> 1e-5)")

        ours_out, theirs_out = (lambda out: out), (lambda out: out.sample)
        inputs = (x, t, y)
        for mode, make in (("forward", _forward), ("forward+backward", _train_step)):
            candidates = {"ours": make(ours, ours_out, inputs), "diffusers": make(theirs, theirs_out, inputs)}
            pair = side_by_side(
                candidates, repeats=repeats, warmup=1 if quick else 2, clock=time.process_time
            )
            rows.append({"model": f"DiT-{size}/2", "mode": mode, **pair, "max_abs_diff": max_diff})
    return report(
        "backbone",
        f"DiT vs diffusers DiTTransformer2DModel, batch {BATCH}, 32x32x4, {device.type} (ratio < 1: ours faster)",
        rows,
        device=str(device),
        repeats=repeats,
        quick=quick,
        clock="time.process_time",
    )


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
