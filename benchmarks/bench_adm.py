"""ADM U-Net: parameter counts of the size table, and the cost of DTR routing in its residual blocks.

Parameter counts are exact (built on the meta device). The routing overhead is the ratio of a training
step (forward + backward) with a DTR router to the same step without one, timed interleaved in one
process; the target is <= 1.03x. Quick mode times `adm_t`; the full run also times `adm_64` (small batch
on CPU). On CPU the timings use one intra-op thread: on a small shared machine more threads only add noise.
"""

from __future__ import annotations

from typing import Any

import torch
from zoo.models.adm import ADM_CONFIGS, ADMUNet, adm_config

from benchmarks.common import format_table, interleaved_timings, report
from zoo import routing

RELEASED_ADM_64_PARAMETERS = 295_904_454


def parameter_rows() -> list[dict[str, Any]]:
    """One row per named size: parameters, routed residual blocks and the attention order."""
    rows = []
    for name in ADM_CONFIGS:
        config = adm_config(name)
        with torch.device("meta"):
            net = ADMUNet(**config)
        rows.append(
            {
                "name": name,
                "image": config["image_size"],
                "params": sum(p.numel() for p in net.parameters()),
                "routed_blocks": len(net.router_channels()),
                "classes": config["num_classes"] or 0,
                "attention_order": "new" if config["use_new_attention_order"] else "legacy",
            }
        )
    return rows


def routing_overhead(name: str, batch: int, repeats: int, device: torch.device) -> dict[str, Any]:
    """Median training-step time with and without a DTR router (beta 0.8), and their ratio."""

    torch.manual_seed(0)
    net = ADMUNet(**adm_config(name, dropout=0.0)).to(device).train()
    channels = net.router_channels()
    router = routing.build("dtr", channels=channels, num_blocks=len(channels), num_tasks=1000).to(device)
    x = torch.randn(batch, net.in_channels, net.image_size, net.image_size, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    y = torch.randint(0, net.num_classes, (batch,), device=device) if net.num_classes else None

    def step(with_router: bool) -> None:
        net.set_router(router if with_router else None)
        net.zero_grad(set_to_none=True)
        net(x, t, y).square().mean().backward()

    timings = interleaved_timings(
        {"plain": lambda: step(False), "dtr": lambda: step(True)}, repeats=repeats, warmup=2
    )
    plain, routed = timings["plain"]["median"], timings["dtr"]["median"]
    return {
        "name": name,
        "batch": batch,
        "device": device.type,
        "plain_s": plain,
        "dtr_s": routed,
        "ratio": routed / plain,
        "plain_iqr_s": timings["plain"]["iqr"],
        "dtr_iqr_s": timings["dtr"]["iqr"],
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Print and save the parameter table and the routing-overhead table."""
    params = parameter_rows()
    adm_64 = next(row for row in params if row["name"] == "adm_64")
    print("\n== ADM U-Net sizes (exact parameter counts) ==")
    print(format_table(params))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cases = [("adm_t", 64, 10 if quick else 30)]
    if not quick:
        cases.append(("adm_64", 16 if device.type == "cuda" else 2, 10))
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        overhead = [routing_overhead(name, batch, repeats, device) for name, batch, repeats in cases]
    finally:
        torch.set_num_threads(threads)
    return report(
        "adm",
        "ADM U-Net: training step with DTR routing vs plain (target ratio <= 1.03)",
        overhead,
        columns=["name", "batch", "device", "plain_s", "dtr_s", "ratio", "plain_iqr_s", "dtr_iqr_s"],
        params=params,
        adm_64_matches_release=adm_64["params"] == RELEASED_ADM_64_PARAMETERS,
        quick=quick,
    )


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
