"""Shared benchmark plumbing: side-by-side interleaved timing, peak memory, tables and JSON results.

Timings are ratios of candidates measured in one process, interleaved (A B A B ...) after warm-up,
so machine noise hits every candidate alike. Absolute seconds are reported but never compared
across runs.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    """Where a result was measured: machine, library versions and threads."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": os.getloadavg(),  # 1, 5, 15 minutes, when the result was written
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # e.g. AVX2, AVX512 (bf16 speed)
    }
    return info


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved_timings(
    candidates: dict[str, Callable[[], Any]],
    repeats: int = 10,
    warmup: int = 2,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, dict[str, float]]:
    """Time each candidate `repeats` times, interleaved A B A B ..., after `warmup` rounds.

    Returns per candidate the median, min, max, interquartile spread and the samples (in the order
    measured, so sample i of every candidate is from round i) in seconds of ``clock`` (wall time by default; ``time.process_time`` gives this process's CPU time, which other jobs on a
    shared machine disturb far less when torch runs one thread).
    """
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            _sync()
            start = clock()
            candidates[name]()
            _sync()
            samples[name].append(clock() - start)
    return {name: {**summarize(values), "samples": values} for name, values in samples.items()}


def side_by_side(
    candidates: dict[str, Callable[[], Any]],
    repeats: int = 10,
    warmup: int = 2,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Two candidates A and B timed interleaved, then their peak memory: the columns of a ratio row.

    Returns `{A}_ms`, `{B}_ms`, `time_ratio` (A / B, medians), `{A}_peak_MiB`, `{B}_peak_MiB`.
    """
    first, second = candidates
    timings = interleaved_timings(candidates, repeats=repeats, warmup=warmup, clock=clock)
    memory = {name: peak_memory_bytes(fn) for name, fn in candidates.items()}
    return {
        f"{first}_ms": 1e3 * timings[first]["median"],
        f"{second}_ms": 1e3 * timings[second]["median"],
        "time_ratio": timings[first]["median"] / timings[second]["median"],
        f"{first}_peak_MiB": memory[first] / 2**20,
        f"{second}_peak_MiB": memory[second] / 2**20,
    }


def round_ratios(values: Sequence[float], base: Sequence[float]) -> dict[str, float]:
    """Median, min and max over the rounds of values[i] / base[i] (the two were timed in one round of
    `interleaved_timings`, so machine noise of that round hits both)."""
    ratios = sorted(v / b for v, b in zip(values, base))
    return {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1]}


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median and spread of repeated measurements."""
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "iqr": quartiles[2] - quartiles[0],
        "repeats": len(ordered),
    }


def peak_memory_bytes(fn: Callable[[], Any]) -> int:
    """Peak memory of one call: CUDA allocator peak on GPU, else torch CPU allocations seen by the profiler."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Walk allocations (each op's SELF bytes, so a parent and its child are not counted twice) and
    # frees (the profiler's "[memory]" events, negative) in time order; the peak of the running sum
    # is the peak of bytes allocated during the call.
    events = sorted(
        (e for e in prof.events() if e.self_cpu_memory_usage != 0),
        key=lambda e: e.time_range.start,
    )
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return int(peak)


def format_table(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table of rows (dicts), columns in the given order."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    body = [[cell(row.get(col, "")) for col in columns] for row in rows]
    widths = [max(len(col), *(len(line[i]) for line in body)) for i, col in enumerate(columns)]
    header = "  ".join(col.ljust(w) for col, w in zip(columns, widths))
    rule = "  ".join("-" * w for w in widths)
    lines = ["  ".join(value.ljust(w) for value, w in zip(line, widths)) for line in body]
    return "\n".join([header, rule, *lines])


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write benchmarks/results/<name>.json with the machine info attached; returns the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    record = {
        "benchmark": name,
        "machine": machine_info(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **payload,
    }
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


def report(
    name: str, title: str, rows: list[dict[str, Any]], columns: Sequence[str] | None = None, **extra: Any
) -> dict[str, Any]:
    """Print a titled table and write the JSON result; returns the payload."""
    print(f"\n== {title} ==")
    print(format_table(rows, columns))
    payload = {"title": title, "rows": rows, **extra}
    path = write_result(name, payload)
    print(f"(written {path.relative_to(RESULTS_DIR.parent.parent)})")
    return payload
