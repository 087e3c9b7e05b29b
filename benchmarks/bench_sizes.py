"""The DiT size table: parameters and forward GFLOPs (multiply-adds, 32x32x4 latents) per size and patch.

Counted on the meta device (free); the paper's figures are printed alongside where it gives them.
"""

from __future__ import annotations

import torch
from zoo.models.dit import DIT_SIZES, PATCH_SIZES, DiT, count_params, dit_config, gflops

from benchmarks.common import report

# Peebles & Xie 2023, Tables 1 and 4 (params in millions for patch 2; GFLOPs).
PAPER = {
    ("S", 2): (33.0, 6.06), ("S", 4): (None, 1.41),
    ("B", 2): (130.5, 23.01), ("B", 4): (None, 5.56), ("B", 8): (None, 1.42),
    ("L", 2): (458.1, 80.7), ("L", 4): (None, 19.7),
    ("XL", 2): (675.1, 118.6), ("XL", 4): (None, 29.05),
}  # fmt: skip


def run(quick: bool = False) -> dict:
    """Print and save the size table (quick changes nothing: the count is instant on meta)."""
    rows = []
    for size in DIT_SIZES:
        for patch in PATCH_SIZES:
            config = dit_config(size, patch)
            with torch.device("meta"):
                net = DiT(**config)
            paper_params, paper_gflops = PAPER.get((size, patch), (None, None))
            rows.append(
                {
                    "model": f"DiT-{size}/{patch}",
                    "hidden": config["hidden_size"],
                    "depth": config["depth"],
                    "heads": config["num_heads"],
                    "tokens": (32 // patch) ** 2,
                    "params_M": f"{count_params(net) / 1e6:.2f}",
                    "paper_params_M": paper_params if paper_params is not None else "",
                    "gflops": f"{gflops(config):.3f}",
                    "paper_gflops": paper_gflops if paper_gflops is not None else "",
                }
            )
    return report("sizes", "DiT sizes: parameters and forward GFLOPs (multiply-adds) at 32x32x4", rows)


if __name__ == "__main__":
    run()
