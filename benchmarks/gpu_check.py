"""GPU readiness check: every CUDA path of the zoo, and its speed and memory, in one timed command.

Correctness (each a pass / fail against a stated tolerance):
  attention      the zoo's sdpa, math and xformers backends (models/dit.py) against a float64 reference,
                 forward and input gradient, fp32 (1e-5) and bf16 (1e-2 / 2e-2)
  precision      one Trainer step of dit_s_dtr_nash_k5 in fp32, bf16 autocast and fp16 + GradScaler on
                 CUDA against the fp32 CPU step on the same batch (losses, gradients, Nash weights)
  checkpointing  gradient checkpointing (DiT(grad_checkpointing=True)) gives the same gradients
  fsdp           one-process FSDP (fully_shard on one rank, NCCL on CUDA): the step's gradients equal
                 the unsharded step's; bf16 mixed precision runs
  compile        torch.compile of the net (the Trainer's `net.compile()`, and per block) gives the eager
                 outputs; Nash-MTL's Gram hooks on the compiled net give the eager update (the capture
                 falls back to an eager forward on Gram update steps and says so)
Speed and memory (measured, with the H200's dense bf16 peak as the MFU denominator):
  speed          Trainer steps of DiT-S/2, B/2, XL/2 at 32x32x4 latents, bf16, sdpa vs xformers, eager vs
                 compiled (each DiTBlock compiled): images/s, peak memory, TFLOP/s, MFU (FLOPs counted
                 with torch.utils.flop_counter.FlopCounterMode on a meta twin, forward + backward)
  overheads      at XL/2: DTR's step-time ratio and each balancer's, interleaved against the plain step
  sampling       DDIM-50 with classifier-free guidance, XL/2, images/s
Anchors printed beside them: fast-DiT's DiT-XL/2 0.84 steps/s at batch 128 on one A100 (its MFU recomputed
with our FLOP count) and LightningDiT's ~20 % MFU on H800 (as reported). Targets: >= 40 % MFU for XL/2
bf16 with compile; DTR and UW within 3 % of the plain step.

Every unit of work has a time estimate and starts only when it fits the budget (`--budget`, default
420 s, at most 480 s = 8 minutes); a watchdog writes the JSON and exits at the budget whatever runs.
The JSON (`gpu_check.json`) and a Markdown table (`gpu_check.md`) are rewritten after every unit, so
a timeout still leaves every finished result. Units that cannot run say why (`skipped` + reason).

xformers: the GPU machine has torch 2.11 (cu130) and no xformers. xformers 0.0.35 (torch>=2.10, a 3.2 MB
wheel whose attention runs through PyTorch's own flash / cutlass kernels) travels with the working tree:
`make gpu-wheels` downloads it into benchmarks/wheels/ (git-ignored), the device call carries that
folder, and this script installs it into a temporary directory before any model is built
(`--wheels`). If that fails, xformers is reported unavailable with the reason and its rows are skipped.

Run on the GPU machine (the device tool; about 1-2 minutes of start-up plus at most 7 minutes here,
which leaves a rerun of the failed sections inside the 15-minute device budget):
    run(command="mkdir -p $OUT/r && PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python3
                 benchmarks/gpu_check.py --out $OUT/r 2>&1 | tee $OUT/r/gpu_check.log",
        carry=["benchmarks/wheels"], timeout_s=480)
then copy gpu_check.json / gpu_check.md from the returned files into benchmarks/results/. A rerun of
chosen sections: `--sections compile,fsdp --budget 200` with timeout_s=240 (benchmarks/NOTES.md).

CPU dry run (`--dry-run`, the test tests/test_gpu_check.py runs it): tiny models, the same code paths
where CPU has them (bf16 / fp16 autocast and GradScaler on CPU, FSDP over gloo, torch.compile with the
aot_eager backend), CUDA-only units reported as skipped for want of CUDA; it writes to a temporary
directory unless --out is given.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib
import importlib.util
import json
import math
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: `python benchmarks/gpu_check.py`
    sys.path.insert(0, str(REPO))

from benchmarks.common import interleaved_timings, machine_info, summarize  # noqa: E402

NAME = "gpu_check"
RESULTS_DIR = REPO / "benchmarks" / "results"
WHEELS_DIR = REPO / "benchmarks" / "wheels"
SECTIONS = (
    "env",
    "attention",
    "precision",
    "checkpointing",
    "fsdp",
    "compile",
    "speed",
    "overheads",
    "sampling",
)
CORRECTNESS = ("attention", "precision", "checkpointing", "fsdp", "compile")
MAX_BUDGET_S = 480.0
WATCHDOG_MARGIN_S = 20.0  # units must be planned to end this long before the watchdog fires

H200_BF16_DENSE_PEAK = 989.4e12  # FLOP/s, NVIDIA's datasheet (SXM), without sparsity
A100_BF16_DENSE_PEAK = 312e12
FAST_DIT = {"gpu": "A100", "model": "DiT-XL/2", "steps_per_s": 0.84, "batch": 128}
LIGHTNINGDIT = {"gpu": "H800", "mfu": 0.20}
TARGETS = {"mfu_xl_bf16_compile": 0.40, "dtr_ratio": 1.03, "uw_ratio": 1.03}

NO_CUDA = "no CUDA"
TINY = {"hidden_size": 32, "depth": 2, "num_heads": 2, "input_size": 8, "num_classes": 10}

# Seconds each unit is expected to take on one H200 (compile units include inductor's compile).
ESTIMATES = {
    "env": 10,
    "attention": 10,
    "precision": 35,
    "checkpointing": 15,
    "fsdp": 20,
    "compile": 75,
    "speed_eager": 12,
    "speed_compile": 35,
    "pair_eager": 12,
    "pair_compile": 30,
    "sampling": 15,
}


# ----------------------------------------------------------------------------------------------- plan


class Plan:
    """Sizes and devices of one mode: the CUDA check or the CPU dry run."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
        self.cuda = not dry_run
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.overrides: dict[str, Any] = dict(TINY) if dry_run else {}
        self.check_batch = 10 if dry_run else 20  # 2 / 4 samples per cluster of K=5
        self.compile_overrides: dict[str, Any] = dict(TINY) if dry_run else {"depth": 4}
        self.compile_backend = "aot_eager" if dry_run else "inductor"
        self.nash_compile_scopes = ("blocks",) if dry_run else ("net", "blocks")
        # (size, batch) of the speed rows, most important first (the budget may cut the tail)
        self.speed_sizes = [("S", 8)] if dry_run else [("XL", 128), ("B", 256), ("S", 256)]
        self.pair_batch = 10 if dry_run else 128
        self.warmup, self.repeats = (1, 2) if dry_run else (3, 8)
        self.pair_warmup, self.pair_repeats = (1, 2) if dry_run else (2, 6)
        self.sample_batch, self.sample_steps, self.guidance = (4, 5, 1.5) if dry_run else (64, 50, 1.5)
        self.attention_shapes = [(2, 16, 32, 2)] if dry_run else [(8, 256, 384, 6), (4, 256, 1152, 16)]

    def estimate(self, unit: str) -> float:
        return 0.5 if self.dry_run else float(ESTIMATES[unit])


def skipped(reason: str, **extra: Any) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason, **extra}


def no_cuda(what: str) -> dict[str, Any]:
    return skipped(f"{NO_CUDA}: {what} needs a CUDA device (CPU dry run)")


def rel_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference|| in float64 (NaN when either holds a non-finite value)."""
    value, reference = value.detach().double().cpu(), reference.detach().double().cpu()
    if not (torch.isfinite(value).all() and torch.isfinite(reference).all()):
        return float("nan")
    return float((value - reference).norm() / reference.norm().clamp_min(1e-300))


def verdict(errors: dict[str, float], tolerances: dict[str, float], **extra: Any) -> dict[str, Any]:
    """A check: passed when every error is finite and within its tolerance."""
    ok = all(math.isfinite(errors[key]) and errors[key] <= tolerances[key] for key in tolerances)
    return {"status": "passed" if ok else "failed", **errors, "tolerance": tolerances, **extra}


# ------------------------------------------------------------------------------------------------ run


class Run:
    """The result being built: sections, time left, and the files rewritten after every unit."""

    def __init__(self, plan: Plan, out_dir: Path, budget: float, command: str, sections: list[str]):
        self.plan = plan
        self.out_dir = out_dir
        self.budget = budget
        self.start = time.perf_counter()
        self.current = "start"
        self.lock = threading.Lock()
        self.result: dict[str, Any] = {
            "benchmark": NAME,
            "mode": "dry-run (CPU, tiny sizes)" if plan.dry_run else "cuda",
            "command": command,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "machine": machine_info(),
            "budget_s": budget,
            "elapsed_s": 0.0,
            "complete": False,
            "sections": {
                name: {"status": "pending"} if name in sections else skipped("not selected (--sections)")
                for name in SECTIONS
            },
        }

    @property
    def sections(self) -> dict[str, dict[str, Any]]:
        return self.result["sections"]

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def fits(self, unit: str) -> str | None:
        """None when the unit's estimate fits the time left, else the reason to skip it."""
        need = self.plan.estimate(unit)
        left = self.budget - WATCHDOG_MARGIN_S - self.elapsed()
        if need <= left:
            return None
        return f"time budget: needs ~{need:.0f} s, {max(left, 0):.0f} s left of --budget {self.budget:.0f}"

    def save(self) -> None:
        with self.lock:
            self.result["elapsed_s"] = round(self.elapsed(), 2)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            text = json.dumps(self.result, indent=2, default=_json_default) + "\n"
            path = self.out_dir / f"{NAME}.json"
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
            (self.out_dir / f"{NAME}.md").write_text(markdown(self.result))

    def watchdog(self) -> threading.Timer:
        def fire() -> None:
            self.result["aborted"] = f"watchdog at {self.budget:.0f} s, during {self.current}"
            with contextlib.suppress(Exception):
                self.save()
            print(f"gpu_check: {self.result['aborted']}; partial results in {self.out_dir}", flush=True)
            os._exit(3)

        timer = threading.Timer(self.budget, fire)
        timer.daemon = True
        timer.start()
        return timer


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    return repr(value)


def section_status(items: list[dict[str, Any]], measured: bool = False) -> str:
    """passed / failed of the checks (measured for speed sections); skipped when nothing ran."""
    statuses = [item.get("status") for item in items]
    if any(s in ("failed", "error") for s in statuses):
        return "failed"
    ran = [s for s in statuses if s not in ("skipped", None)]
    if not ran:
        return "skipped"
    return "measured" if measured else "passed"


def unit(
    run: Run, items: list[dict[str, Any]], name: str, kind: str, fn: Callable[[], dict[str, Any]]
) -> None:
    """Run one unit if it fits the budget; record its result (or error) under `name`, then save."""
    reason = run.fits(kind)
    if reason is not None:
        items.append({"name": name, **skipped(reason)})
        run.save()
        return
    run.current = name
    started = time.perf_counter()
    try:
        outcome = fn()
    except Exception as exc:  # one broken path must not hide the others
        outcome = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": _tail()}
    outcome.setdefault("seconds", round(time.perf_counter() - started, 2))
    items.append({"name": name, **outcome})
    run.save()
    print(f"  {name}: {outcome.get('status')} {_brief(outcome)}", flush=True)


def _tail() -> str:
    return "".join(traceback.format_exc().splitlines(keepends=True)[-12:])


def _brief(outcome: dict[str, Any]) -> str:
    if outcome.get("status") == "skipped" or outcome.get("status") == "error":
        return f"({outcome.get('reason') or outcome.get('error')})"
    keys = [k for k, v in outcome.items() if isinstance(v, float) and k != "seconds"][:4]
    return " ".join(f"{k}={outcome[k]:.3g}" for k in keys)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------- building


def build(name: str, device: torch.device, **overrides: Any) -> Any:
    """zoo.create(name, ...) on `device`; on CUDA initialised there (fast), else on CPU and moved."""
    import zoo

    if device.type == "cuda":
        try:
            with torch.device(device):
                model = zoo.create(name, **overrides)
            if all(t.device.type == "cuda" for t in [*model.parameters(), *model.buffers()]):
                return model
        except Exception as exc:
            warnings.warn(f"building {name} on {device} failed ({exc}); building on CPU", stacklevel=2)
    return zoo.create(name, **overrides).to(device)


def perturb_(model: Any, std: float = 0.02, seed: int = 0) -> Any:
    """Add N(0, std) to every weight (CPU draws): adaLN-Zero's zeros would make most gradients zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.net.parameters():
            if param.requires_grad:
                noise = torch.randn(param.shape, generator=generator, dtype=torch.float32) * std
                param.add_(noise.to(param.device, param.dtype))
    return model


def no_label_dropout(model: Any) -> Any:
    """Label dropout draws on the device: off, so that CPU and CUDA see the same labels."""
    if getattr(model.net, "y_embedder", None) is not None:
        model.net.y_embedder.dropout_prob = 0.0
    return model


def latent_batch(model: Any, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """x0, labels, stratified timesteps and noise for `model`, drawn on CPU."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, *model.sample_shape)
    x0 = torch.randn(shape, generator=generator)
    y = torch.randint(0, max(model.num_classes, 1), (batch,), generator=generator)
    t = model.clusters.sample_timesteps(batch, generator=generator)
    noise = torch.randn(shape, generator=generator)
    return x0, y, t, noise


def trainer_for(model: Any, device: torch.device, out: str, precision: str, batch: int) -> Any:
    from zoo.data import TensorImageDataset
    from zoo.train import TrainConfig, Trainer

    channels, size, _ = model.sample_shape
    data = TensorImageDataset(
        torch.zeros(batch, channels, size, size), torch.zeros(batch, dtype=torch.long), 10
    )
    data.num_classes = max(model.num_classes, 1)
    config = TrainConfig(
        model=model.config["name"],
        batch=batch,
        out=out,
        progress=False,
        device=str(device),
        precision=precision,
    )
    return Trainer(config, model=model, dataset=data)


def flat_grads(params: list[torch.Tensor]) -> torch.Tensor:
    grads = []
    for param in params:
        grad = param.grad
        if grad is None:
            grad = torch.zeros_like(param)
        if hasattr(grad, "full_tensor"):  # FSDP's DTensor
            grad = grad.full_tensor()
        grads.append(grad.detach().float().reshape(-1).cpu())
    return torch.cat(grads)


def train_flops_per_image(config: dict[str, Any]) -> float:
    """FLOPs of one training image (forward + backward of the net), counted by FlopCounterMode on meta."""
    from torch.utils.flop_counter import FlopCounterMode
    from zoo.models.dit import DiT

    config = {**config, "attn_backend": "math", "grad_checkpointing": False}
    with torch.device("meta"):
        twin = DiT(**config).train()
        x = torch.zeros(1, twin.in_channels, twin.input_size, twin.input_size)
        t = torch.zeros(1, dtype=torch.long)
        y = torch.zeros(1, dtype=torch.long) if twin.num_classes else None
    counter = FlopCounterMode(display=False)
    with counter:
        twin(x, t, y).float().square().mean().backward()
    return float(counter.get_total_flops())


@contextlib.contextmanager
def exact_fp32() -> Any:
    """No TF32 in matmuls or convolutions (fp32 comparisons at 1e-5)."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def compile_blocks(net: torch.nn.Module, backend: str) -> None:
    """Regional compile: each DiTBlock compiled in place (identical blocks share one compiled graph)."""
    for block in net.blocks:
        block.compile(backend=backend)


# ------------------------------------------------------------------------------------------- xformers


def install_wheels(directory: Path) -> dict[str, Any]:
    """pip-install the carried wheels into a temporary target and put it first on sys.path."""
    wheels = sorted(directory.glob("*.whl")) if directory.is_dir() else []
    if not wheels:
        return {
            "installed": [],
            "reason": f"no wheels in {directory} (make gpu-wheels, then carry the folder)",
        }
    target = Path(tempfile.gettempdir()) / "gpu_check_site"
    command = [
        sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
        "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, wheels),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if proc.returncode:
        return {"installed": [], "reason": f"pip install failed: {(proc.stderr or proc.stdout)[-500:]}"}
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    return {"installed": [w.name for w in wheels], "target": str(target)}


def xformers_status(plan: Plan, wheels: Path) -> dict[str, Any]:
    """Whether xformers' memory-efficient attention can run here; installs carried wheels first."""
    info: dict[str, Any] = {}
    if importlib.util.find_spec("xformers") is None:
        if not plan.cuda:
            return {"available": False, "reason": f"{NO_CUDA}: not installed in the dry run"}
        info["wheels"] = install_wheels(wheels)
    if importlib.util.find_spec("xformers") is None:
        reason = info.get("wheels", {}).get("reason", "not installed")
        return {**info, "available": False, "reason": f"xformers not importable: {reason}"}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import xformers
            import xformers.ops
        info.update(
            version=getattr(xformers, "__version__", "?"),
            import_warnings=[str(w.message)[:300] for w in caught],
        )
    except Exception as exc:
        return {**info, "available": False, "reason": f"import xformers failed: {type(exc).__name__}: {exc}"}
    if not plan.cuda:
        return {
            **info,
            "available": False,
            "reason": f"{NO_CUDA}: memory_efficient_attention needs CUDA tensors",
        }
    try:
        q = torch.randn(1, 16, 2, 64, device=plan.device, dtype=torch.bfloat16)
        xformers.ops.memory_efficient_attention(q, q, q)
        torch.cuda.synchronize()
    except Exception as exc:
        return {
            **info,
            "available": False,
            "reason": f"memory_efficient_attention failed: {type(exc).__name__}: {exc}",
        }
    return {**info, "available": True}


# ------------------------------------------------------------------------------------------- sections


def sec_env(run: Run, plan: Plan, xformers: dict[str, Any]) -> None:
    section = run.sections["env"]
    section.update(
        status="measured",
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        cuda_available=torch.cuda.is_available(),
        nccl_available=bool(torch.distributed.is_available() and torch.distributed.is_nccl_available()),
        xformers=xformers,
        float32_matmul_precision=torch.get_float32_matmul_precision(),
    )
    if not plan.cuda:
        section["gpu"] = no_cuda("the GPU's properties")
        section["matmul_ceiling"] = no_cuda("the bf16 matmul ceiling")
        return
    props = torch.cuda.get_device_properties(0)
    section["gpu"] = {
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "memory_GiB": round(props.total_memory / 2**30, 1),
    }
    n = 8192
    a = torch.randn(n, n, device=plan.device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=plan.device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / 10
    section["matmul_ceiling"] = {
        "status": "measured",
        "what": "8192^3 bf16 matmul, random data, mean of 10 after 3 warm-ups",
        "TFLOPs": 2 * n**3 / seconds / 1e12,
    }
    del a, b
    free_memory()


def _attention_case(
    plan: Plan, shape: tuple[int, int, int, int], dtype: torch.dtype, xformers_ok: bool
) -> list[dict]:
    from zoo.models.dit import Attention

    batch, tokens, dim, heads = shape
    torch.manual_seed(0)
    reference = Attention(dim, heads, backend="math").to(plan.device, torch.float64)
    x = torch.randn(batch, tokens, dim, device=plan.device, dtype=torch.float64)
    grad_out = torch.randn(batch, tokens, dim, device=plan.device, dtype=torch.float64)
    x_ref = x.clone().requires_grad_(True)
    out_ref = reference(x_ref)
    out_ref.backward(grad_out)
    label = "fp32" if dtype == torch.float32 else "bf16"
    tolerances = (
        {"out_rel": 1e-5, "grad_rel": 1e-5} if dtype == torch.float32 else {"out_rel": 1e-2, "grad_rel": 2e-2}
    )
    rows = []
    for backend in ("sdpa", "math", "xformers"):
        name = f"{backend} {label} (B,N,C,H)={shape}"
        if backend == "xformers" and not xformers_ok:
            rows.append(
                {
                    "name": name,
                    **(
                        no_cuda("xformers")
                        if not plan.cuda
                        else skipped("xformers unavailable (env section)")
                    ),
                }
            )
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = Attention(dim, heads, backend=backend)
            module.load_state_dict(reference.state_dict())
            module = module.to(plan.device, dtype)
            x_in = x.to(dtype).requires_grad_(True)
            with exact_fp32():
                out = module(x_in)
                out.backward(grad_out.to(dtype))
        fell_back = [str(w.message) for w in caught if "falls back" in str(w.message)]
        errors = {"out_rel": rel_error(out, out_ref), "grad_rel": rel_error(x_in.grad, x_ref.grad)}
        rows.append(
            {"name": name, **verdict(errors, tolerances, backend_used=module.backend, fell_back=fell_back)}
        )
    if xformers_ok and dtype == torch.float32:
        # the zoo's backend hands fp32 to sdpa by design; the xformers kernel itself in fp32:
        import xformers.ops

        q, k, v = reference.qkv(x).view(batch, tokens, 3, heads, dim // heads).float().unbind(2)
        q, k, v = (t.detach().contiguous() for t in (q, k, v))
        out = xformers.ops.memory_efficient_attention(q, k, v)
        expected = torch.softmax(
            (q.double().transpose(1, 2) * (dim // heads) ** -0.5) @ k.double().permute(0, 2, 3, 1), -1
        )
        expected = (expected @ v.double().transpose(1, 2)).transpose(1, 2)
        rows.append(
            {
                "name": f"xformers op fp32 (B,N,C,H)={shape}",
                **verdict({"out_rel": rel_error(out, expected)}, {"out_rel": 1e-5}),
            }
        )
    return rows


def sec_attention(run: Run, plan: Plan, xformers: dict[str, Any]) -> None:
    items: list[dict[str, Any]] = []
    run.sections["attention"] = {"status": "running", "checks": items, "reference": "math backend in float64"}
    ok = bool(xformers.get("available"))

    def all_cases() -> dict[str, Any]:
        rows = [
            r
            for shape in plan.attention_shapes
            for dtype in (torch.float32, torch.bfloat16)
            for r in _attention_case(plan, shape, dtype, ok)
        ]
        items.extend(rows)
        return {"status": section_status(rows), "cases": len(rows)}

    holder: list[dict[str, Any]] = []
    unit(run, holder, "all cases", "attention", all_cases)
    if holder[0]["status"] in ("error", "skipped"):
        items.append(holder[0])
    run.sections["attention"]["status"] = section_status(items)


def _precision_step(model: Any, device: torch.device, precision: str, batch: tuple, out: str) -> dict:
    """One Trainer step (retried while fp16's GradScaler skips it); losses, unscaled gradients, weights."""
    trainer = trainer_for(model, device, out, precision, len(batch[0]))
    x0, y, t, noise = batch
    skips = 0
    with exact_fp32():
        for _ in range(6):
            logs = trainer.train_step(x0.to(device), y.to(device), t.to(device), noise.to(device))
            if not logs.get("skipped"):
                break
            skips += 1
    if logs.get("skipped"):
        raise RuntimeError(f"{precision}: every step skipped (non-finite) after {skips} tries")
    return {
        "cluster_losses": torch.tensor(logs["cluster_losses"]),
        "grads": flat_grads(trainer.params),
        "weights": torch.tensor(logs["weights"]),
        "scaler_skips": skips,
    }


def sec_precision(run: Run, plan: Plan) -> None:
    items: list[dict[str, Any]] = []
    run.sections["precision"] = {
        "status": "running",
        "model": "dit_s_dtr_nash_k5",
        "checks": items,
        "reference": "fp32 Trainer step on CPU, same weights (perturbed from init) and batch",
    }
    tolerances = {
        "fp32": {"loss_rel": 1e-5, "grad_rel": 1e-4, "weights_rel": 1e-4},
        "bf16": {"loss_rel": 2e-2, "grad_rel": 5e-2, "weights_rel": 5e-2},
        "fp16": {"loss_rel": 1e-2, "grad_rel": 2e-2, "weights_rel": 2e-2},
    }

    def all_steps() -> dict[str, Any]:
        base = no_label_dropout(
            perturb_(
                build(
                    "dit_s_dtr_nash_k5",
                    torch.device("cpu"),
                    **plan.overrides,
                    mtl_options={"update_every": 1},
                )
            )
        )
        batch = latent_batch(base, plan.check_batch)
        with tempfile.TemporaryDirectory() as out:
            reference = _precision_step(copy.deepcopy(base), torch.device("cpu"), "fp32", batch, out)
            for precision in ("fp32", "bf16", "fp16"):
                got = _precision_step(copy.deepcopy(base), plan.device, precision, batch, out)
                errors = {
                    "loss_rel": rel_error(got["cluster_losses"], reference["cluster_losses"]),
                    "grad_rel": rel_error(got["grads"], reference["grads"]),
                    "weights_rel": rel_error(got["weights"], reference["weights"]),
                }
                where = "cuda" if plan.cuda else "cpu (dry run)"
                items.append(
                    {
                        "name": f"{precision} on {where} vs fp32 cpu",
                        **verdict(errors, tolerances[precision], scaler_skips=got["scaler_skips"]),
                    }
                )
                run.save()
        return {"status": section_status(items)}

    holder: list[dict[str, Any]] = []
    unit(run, holder, "steps", "precision", all_steps)
    if holder[0]["status"] in ("error", "skipped"):
        items.append(holder[0])
    run.sections["precision"]["status"] = section_status(items)


def _loss_grads(model: Any, batch: tuple, device: torch.device, autocast: torch.dtype | None) -> torch.Tensor:
    x0, y, t, noise = (part.to(device) for part in batch)
    model.net.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        out = model.loss(x0, y, t=t, noise=noise)
    model.backward(out)
    return flat_grads([p for p in model.net.parameters() if p.requires_grad])


def sec_checkpointing(run: Run, plan: Plan) -> None:
    items: list[dict[str, Any]] = []
    run.sections["checkpointing"] = {"status": "running", "model": "dit_s_dtr", "checks": items}

    def checks() -> dict[str, Any]:
        base = no_label_dropout(perturb_(build("dit_s_dtr", plan.device, **plan.overrides)))
        batch = latent_batch(base, plan.check_batch)
        for label, dtype, tol in (("fp32", None, 1e-6), ("bf16", torch.bfloat16, 1e-2)):
            plain, recompute = copy.deepcopy(base).train(), copy.deepcopy(base).train()
            recompute.net.grad_checkpointing = True
            with exact_fp32():
                expected = _loss_grads(plain, batch, plan.device, dtype)
                got = _loss_grads(recompute, batch, plan.device, dtype)
            errors = {
                "grad_rel": rel_error(got, expected),
                "max_abs_diff": float((got - expected).abs().max()),
            }
            items.append(
                {
                    "name": f"{label} checkpointed vs plain",
                    **verdict(errors, {"grad_rel": tol}, bitwise_equal=bool(torch.equal(got, expected))),
                }
            )
        if not plan.cuda:
            items.append({"name": "peak memory with / without", **no_cuda("the CUDA allocator's peak")})
            return {"status": section_status(items)}
        peaks = {}
        for flag in (False, True):
            model = copy.deepcopy(base).train()
            model.net.grad_checkpointing = flag
            big = latent_batch(model, 64)
            free_memory()
            torch.cuda.reset_peak_memory_stats()
            _loss_grads(model, big, plan.device, torch.bfloat16)
            torch.cuda.synchronize()
            peaks[flag] = torch.cuda.max_memory_allocated() / 2**30
            del model
        items.append(
            {
                "name": "peak memory bf16 batch 64",
                "status": "measured",
                "plain_GiB": peaks[False],
                "checkpointed_GiB": peaks[True],
            }
        )
        return {"status": section_status(items)}

    holder: list[dict[str, Any]] = []
    unit(run, holder, "checks", "checkpointing", checks)
    if holder[0]["status"] in ("error", "skipped"):
        items.append(holder[0])
    run.sections["checkpointing"]["status"] = section_status(items)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sec_fsdp(run: Run, plan: Plan) -> None:
    import torch.distributed as dist

    from zoo.train.distributed import shard_model

    backend = "nccl" if plan.cuda else "gloo"
    items: list[dict[str, Any]] = []
    run.sections["fsdp"] = {
        "status": "running",
        "model": "dit_s_dtr_nash_k5",
        "backend": backend,
        "world_size": 1,
        "checks": items,
    }

    def checks() -> dict[str, Any]:
        base = no_label_dropout(
            perturb_(
                build("dit_s_dtr_nash_k5", plan.device, **plan.overrides, mtl_options={"update_every": 1})
            )
        )
        batch = latent_batch(base, plan.check_batch)
        with exact_fp32():
            expected = _loss_grads(copy.deepcopy(base), batch, plan.device, None)
        if dist.is_initialized():
            raise RuntimeError("a process group is already initialised")
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
        try:
            model = copy.deepcopy(base)
            shard_model(model.net)
            with exact_fp32():
                got = _loss_grads(model, batch, plan.device, None)
            sharded = sum(hasattr(p, "full_tensor") for p in model.net.parameters())
            items.append(
                {
                    "name": "fp32 sharded step == unsharded",
                    **verdict(
                        {"grad_rel": rel_error(got, expected)}, {"grad_rel": 1e-5}, sharded_params=sharded
                    ),
                }
            )
            run.save()
            mixed = copy.deepcopy(base)
            shard_model(mixed.net, param_dtype=torch.bfloat16)
            optimizer = torch.optim.AdamW([p for p in mixed.net.parameters() if p.requires_grad], lr=1e-4)
            x0, y, t, noise = (part.to(plan.device) for part in batch)
            losses = []
            for _ in range(2):
                optimizer.zero_grad(set_to_none=True)
                grads = _loss_grads(mixed, batch, plan.device, None)
                optimizer.step()
                with torch.no_grad():
                    losses.append(float(mixed.loss(x0, y, t=t, noise=noise).total))
            finite = bool(torch.isfinite(grads).all()) and all(math.isfinite(v) for v in losses)
            items.append(
                {
                    "name": "bf16 mixed precision (param_dtype) two optimizer steps",
                    "status": "passed" if finite else "failed",
                    "finite": finite,
                    "losses_after_steps": losses,
                    "grad_rel_vs_fp32": rel_error(grads, expected),
                }
            )
        finally:
            dist.destroy_process_group()
        return {"status": section_status(items)}

    holder: list[dict[str, Any]] = []
    unit(run, holder, "checks", "fsdp", checks)
    if holder[0]["status"] in ("error", "skipped"):
        items.append(holder[0])
    run.sections["fsdp"]["status"] = section_status(items)


def sec_compile(run: Run, plan: Plan) -> None:
    items: list[dict[str, Any]] = []
    run.sections["compile"] = {
        "status": "running",
        "model": "dit_s_dtr_nash_k5",
        "overrides": plan.compile_overrides,
        "backend": plan.compile_backend,
        "checks": items,
    }

    def checks() -> dict[str, Any]:
        base = no_label_dropout(
            perturb_(
                build(
                    "dit_s_dtr_nash_k5",
                    plan.device,
                    **plan.compile_overrides,
                    mtl_options={"update_every": 2},
                )
            )
        )
        x0, y, t, noise = (p.to(plan.device) for p in latent_batch(base, plan.check_batch))
        eager = copy.deepcopy(base).eval()
        with torch.no_grad(), exact_fp32():
            expected = eager.net(x0, t, y)
            with torch.autocast(plan.device.type, dtype=torch.bfloat16):
                expected_bf16 = eager.net(x0, t, y)
        for scope in ("net", "blocks"):
            model = copy.deepcopy(base).eval()
            if scope == "net":
                model.net.compile(backend=plan.compile_backend)
            else:
                compile_blocks(model.net, plan.compile_backend)
            with torch.no_grad(), exact_fp32():
                got = model.net(x0, t, y)
            items.append(
                {
                    "name": f"compiled {scope} fp32 forward == eager",
                    **verdict({"out_rel": rel_error(got, expected)}, {"out_rel": 1e-5}),
                }
            )
            if scope == "net":
                with torch.no_grad(), torch.autocast(plan.device.type, dtype=torch.bfloat16):
                    got = model.net(x0, t, y)
                items.append(
                    {
                        "name": "compiled net bf16 forward == eager bf16",
                        **verdict({"out_rel": rel_error(got, expected_bf16)}, {"out_rel": 2e-2}),
                    }
                )
            run.save()
        # Nash-MTL (update_every=2) on the compiled net: a Gram update step, then a held step. The dry run
        # compiles the blocks only (the whole net's graph breaks make aot_eager slow on CPU).
        for scope in plan.nash_compile_scopes:
            reference, compiled = copy.deepcopy(base).train(), copy.deepcopy(base).train()
            if scope == "net":
                compiled.net.compile(backend=plan.compile_backend)
            else:
                compile_blocks(compiled.net, plan.compile_backend)
            optimizers = [
                torch.optim.AdamW([p for p in m.net.parameters() if p.requires_grad], lr=1e-3)
                for m in (reference, compiled)
            ]
            for step, kind in enumerate(("Gram update", "held weights")):
                grads = []
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    for model, optimizer in zip((reference, compiled), optimizers):
                        optimizer.zero_grad(set_to_none=True)
                        with exact_fp32():
                            out = model.loss(x0, y, t=t, noise=noise)
                            logs = model.backward(out)
                        grads.append(flat_grads([p for p in model.net.parameters() if p.requires_grad]))
                        optimizer.step()
                said = [str(w.message) for w in caught if "GramCapture" in str(w.message)]
                items.append(
                    {
                        "name": f"Nash-MTL step {step} ({kind}) on compiled {scope} == eager",
                        **verdict(
                            {"grad_rel": rel_error(grads[1], grads[0])},
                            {"grad_rel": 1e-4},
                            updated=bool(logs.get("updated")),
                            balancer_said=said,  # warned once per process
                        ),
                    }
                )
                run.save()
        return {"status": section_status(items)}

    holder: list[dict[str, Any]] = []
    unit(run, holder, "checks", "compile", checks)
    if holder[0]["status"] in ("error", "skipped"):
        items.append(holder[0])
    run.sections["compile"]["status"] = section_status(items)


def _time_trainer(trainer: Any, batch: tuple, warmup: int, repeats: int, cuda: bool) -> dict[str, Any]:
    x0, y = batch[0].to(trainer.device), batch[1].to(trainer.device)
    for _ in range(warmup):
        trainer.train_step(x0, y)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    samples = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        logs = trainer.train_step(x0, y)
        if cuda:
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    stats = summarize(samples)
    out = {
        "step_ms": 1e3 * stats["median"],
        "step_ms_iqr": 1e3 * stats["iqr"],
        "repeats": repeats,
        "loss": logs.get("loss"),
    }
    out["peak_GiB"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return out


def sec_speed(run: Run, plan: Plan, xformers: dict[str, Any], sizes: list[tuple[str, int]]) -> None:
    from zoo.models.dit import dit_config

    rows: list[dict[str, Any]] = run.sections["speed"].setdefault("rows", [])
    run.sections["speed"].update(
        status="running",
        precision="bf16 autocast" if plan.cuda else "fp32 (dry run)",
        compile_scope="each DiTBlock compiled (regional; identical blocks share one graph)",
        peak_FLOPs=H200_BF16_DENSE_PEAK,
        flops="FlopCounterMode on a meta twin: forward + backward of the net per image",
    )
    ceiling = (run.sections["env"].get("matmul_ceiling") or {}).get("TFLOPs")
    for size, batch in sizes:
        config = dit_config(
            size, 2, **{"input_size": 32, "in_channels": 4, "num_classes": 1000, **plan.overrides}
        )
        flops = train_flops_per_image(config)
        for compiled in (False, True):
            for backend in ("sdpa", "xformers"):
                label = f"DiT-{size}/2{' (tiny)' if plan.dry_run else ''} {backend}{' compile' if compiled else ''}"
                base = {
                    "model": f"dit_{size.lower()}",
                    "backend": backend,
                    "compile": compiled,
                    "batch": batch,
                    "train_GFLOP_per_image": flops / 1e9,
                }
                if not plan.cuda and (compiled or backend == "xformers"):
                    rows.append(
                        {
                            "name": label,
                            **base,
                            **no_cuda("compiled / xformers timing" if compiled else "xformers"),
                        }
                    )
                    continue
                if backend == "xformers" and not xformers.get("available"):
                    rows.append(
                        {"name": label, **base, **skipped(f"xformers unavailable: {xformers.get('reason')}")}
                    )
                    continue

                def measure(
                    size=size, batch=batch, backend=backend, compiled=compiled, flops=flops
                ) -> dict[str, Any]:
                    model = build(f"dit_{size.lower()}", plan.device, **plan.overrides, attn_backend=backend)
                    with tempfile.TemporaryDirectory() as out:
                        trainer = trainer_for(model, plan.device, out, "bf16" if plan.cuda else "fp32", batch)
                        if compiled:
                            compile_blocks(trainer.model.net, "inductor")
                        timing = _time_trainer(
                            trainer, latent_batch(model, batch), plan.warmup, plan.repeats, plan.cuda
                        )
                        del trainer, model
                    free_memory()
                    images = batch / (timing["step_ms"] / 1e3)
                    achieved = images * flops
                    result = {
                        "status": "measured",
                        **timing,
                        "images_per_s": images,
                        "TFLOPs": achieved / 1e12,
                    }
                    if plan.cuda:
                        result["mfu"] = achieved / H200_BF16_DENSE_PEAK
                        if ceiling:
                            result["mfu_vs_matmul_ceiling"] = achieved / (ceiling * 1e12)
                    else:
                        result["mfu"] = None
                        result["mfu_reason"] = f"{NO_CUDA}: MFU is over the H200's bf16 peak"
                    return result

                holder: list[dict[str, Any]] = []
                unit(run, holder, label, "speed_compile" if compiled else "speed_eager", measure)
                rows.append({**base, **holder[0]})
    run.sections["speed"]["status"] = section_status(rows, measured=True)


PAIRS_EAGER = [
    ("DTR", "dit_xl", "dit_xl_dtr", {}),
    ("UW", "dit_xl_k5", "dit_xl_uw_k5", {}),
    ("FAMO", "dit_xl_k5", "dit_xl_famo_k5", {}),
    ("Nash-MTL (Gram every step)", "dit_xl_k5", "dit_xl_nash_k5", {"update_every": 1}),
    ("PCGrad (Gram every step)", "dit_xl_k5", "dit_xl_pcgrad_k5", {"update_every": 1}),
    ("IMTL-G (Gram every step)", "dit_xl_k5", "dit_xl_imtl_k5", {"update_every": 1}),
]
PAIRS_COMPILED = [
    ("DTR", "dit_xl", "dit_xl_dtr", {}),
    ("UW", "dit_xl", "dit_xl_uw_k5", {}),
    ("DTR + UW", "dit_xl", "dit_xl_dtr_uw_k5", {}),
]


def sec_overheads(run: Run, plan: Plan) -> None:
    import zoo

    rows: list[dict[str, Any]] = []
    run.sections["overheads"] = {
        "status": "running",
        "rows": rows,
        "what": "step-time ratio candidate / reference, interleaved A B A B after warm-up, same batch",
        "batch": plan.pair_batch,
        "precision": "bf16 autocast" if plan.cuda else "fp32 (dry run)",
        "size": "XL/2" if plan.cuda else "tiny",
    }
    for compiled, pairs in ((True, PAIRS_COMPILED), (False, PAIRS_EAGER)):  # the targets first
        for label, reference, candidate, options in pairs:
            name = f"{label}{' compile' if compiled else ''}"
            base = {
                "reference": reference,
                "candidate": candidate,
                "compile": compiled,
                "mtl_options": options,
            }
            if compiled and not plan.cuda:
                rows.append({"name": name, **base, **no_cuda("compiled timing")})
                continue

            def measure(
                reference=reference, candidate=candidate, options=options, compiled=compiled
            ) -> dict[str, Any]:
                with tempfile.TemporaryDirectory() as out:
                    extra = {"mtl_options": options} if options else {}
                    trainers = {}
                    for role, name_ in (("reference", reference), ("candidate", candidate)):
                        model = build(
                            name_, plan.device, **plan.overrides, **(extra if role == "candidate" else {})
                        )
                        trainers[role] = trainer_for(
                            model, plan.device, out, "bf16" if plan.cuda else "fp32", plan.pair_batch
                        )
                        if compiled:
                            compile_blocks(trainers[role].model.net, "inductor")
                    x0, y, _, _ = latent_batch(trainers["reference"].model, plan.pair_batch)
                    x0, y = x0.to(plan.device), y.to(plan.device)
                    timings = interleaved_timings(
                        {role: (lambda tr=tr: tr.train_step(x0, y)) for role, tr in trainers.items()},
                        repeats=plan.pair_repeats,
                        warmup=plan.pair_warmup,
                    )
                    del trainers
                free_memory()
                ratio = timings["candidate"]["median"] / timings["reference"]["median"]
                result = {
                    "status": "measured",
                    "reference_ms": 1e3 * timings["reference"]["median"],
                    "candidate_ms": 1e3 * timings["candidate"]["median"],
                    "ratio": ratio,
                }
                if (
                    options.get("update_every") == 1
                ):  # held steps cost the linear step: amortise over the recipe's
                    every = int(zoo.create(candidate, **TINY).config["mtl"]["update_every"])
                    result["recipe_update_every"] = every
                    result["ratio_recipe_amortised"] = (ratio + every - 1) / every
                return result

            holder: list[dict[str, Any]] = []
            unit(run, holder, name, "pair_compile" if compiled else "pair_eager", measure)
            rows.append({**base, **holder[0]})
    run.sections["overheads"]["status"] = section_status(rows, measured=True)


def sec_sampling(run: Run, plan: Plan, xformers: dict[str, Any]) -> None:
    rows: list[dict[str, Any]] = []
    run.sections["sampling"] = {
        "status": "running",
        "rows": rows,
        "model": "dit_xl" if plan.cuda else "dit_xl (tiny)",
        "sampler": f"DDIM-{plan.sample_steps}, guidance {plan.guidance} (cond + uncond in one forward)",
        "batch": plan.sample_batch,
        "precision": "bf16 autocast" if plan.cuda else "fp32 (dry run)",
    }
    for backend in ("sdpa", "xformers"):
        if backend == "xformers" and not xformers.get("available"):
            reason = (
                no_cuda("xformers")
                if not plan.cuda
                else skipped(f"xformers unavailable: {xformers.get('reason')}")
            )
            rows.append({"name": backend, **reason})
            continue

        def measure(backend=backend) -> dict[str, Any]:
            model = build("dit_xl", plan.device, **plan.overrides, attn_backend=backend)
            labels = torch.arange(plan.sample_batch) % max(model.num_classes, 1)

            def draw(steps: int) -> torch.Tensor:
                with torch.autocast(plan.device.type, dtype=torch.bfloat16, enabled=plan.cuda):
                    return model.sample(
                        labels, steps=steps, sampler="ddim", guidance=plan.guidance, decode=False
                    )

            draw(2)  # warm-up
            if plan.cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            images = draw(plan.sample_steps)
            if plan.cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            result = {
                "status": "measured",
                "seconds": seconds,
                "images_per_s": plan.sample_batch / seconds,
                "finite": bool(torch.isfinite(images).all()),
                "peak_GiB": torch.cuda.max_memory_allocated() / 2**30 if plan.cuda else None,
            }
            return result

        holder: list[dict[str, Any]] = []
        unit(run, holder, backend, "sampling", measure)
        free_memory()
        rows.append(holder[0])
    run.sections["sampling"]["status"] = section_status(rows, measured=True)


# -------------------------------------------------------------------------------- anchors and targets


def anchors_and_targets(run: Run) -> None:
    from zoo.models.dit import dit_config

    xl = train_flops_per_image(dit_config("XL", 2, input_size=32, in_channels=4, num_classes=1000))
    images = FAST_DIT["steps_per_s"] * FAST_DIT["batch"]
    run.result["anchors"] = {
        "fast_dit_a100": {
            **FAST_DIT,
            "images_per_s": images,
            "train_GFLOP_per_image": xl / 1e9,
            "peak_FLOPs": A100_BF16_DENSE_PEAK,
            "mfu": images * xl / A100_BF16_DENSE_PEAK,
            "how": "0.84 steps/s x 128 images x our forward+backward FLOP count / A100 dense bf16 peak",
        },
        "lightningdit_h800": {**LIGHTNINGDIT, "how": "as reported by LightningDiT; not recomputed"},
    }
    speed = {row.get("name"): row for row in run.sections["speed"].get("rows", [])}
    overheads = {row.get("name"): row for row in run.sections["overheads"].get("rows", [])}

    def target(value: float | None, limit: float, above: bool, what: str) -> dict[str, Any]:
        if value is None:
            return {"status": "not measured", "limit": limit, "what": what}
        met = value >= limit if above else value <= limit
        return {"status": "met" if met else "missed", "value": value, "limit": limit, "what": what}

    xl_row = speed.get("DiT-XL/2 sdpa compile", {})
    run.result["targets"] = {
        "mfu_xl_bf16_compile": target(
            xl_row.get("mfu"), TARGETS["mfu_xl_bf16_compile"], True, "MFU, DiT-XL/2 bf16 compile"
        ),
        "dtr_ratio": target(
            overheads.get("DTR compile", {}).get("ratio"),
            TARGETS["dtr_ratio"],
            False,
            "DTR / plain step time (compile)",
        ),
        "uw_ratio": target(
            overheads.get("UW compile", {}).get("ratio"),
            TARGETS["uw_ratio"],
            False,
            "UW / plain step time (compile)",
        ),
    }


# ------------------------------------------------------------------------------------------- markdown


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _note(row: dict[str, Any]) -> str:
    text = row.get("reason") or row.get("error")
    return f" {text}" if text else ""


def markdown(result: dict[str, Any]) -> str:
    """The result as Markdown: a status table, the check and speed tables, anchors and targets."""
    sections = result["sections"]
    lines = [
        f"# GPU check ({result['mode']})",
        "",
        f"`{result['command']}`, {result['time']}, {result['elapsed_s']} s of a {result['budget_s']:.0f} s budget"
        + ("" if result.get("complete") else " (incomplete)")
        + (f"; aborted: {result['aborted']}" if result.get("aborted") else ""),
        "",
        "| section | status | seconds |",
        "| --- | --- | --- |",
        *(
            f"| {name} | {section.get('status')} | {_cell(section.get('seconds'))} |"
            for name, section in sections.items()
        ),
        "",
    ]
    env = sections.get("env", {})
    gpu = env.get("gpu", {})
    lines += [
        f"torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), GPU: {gpu.get('name') or gpu.get('reason')}, "
        f"xformers: {(env.get('xformers') or {}).get('version') if (env.get('xformers') or {}).get('available') else (env.get('xformers') or {}).get('reason')}, "
        f"bf16 matmul ceiling: {_cell((env.get('matmul_ceiling') or {}).get('TFLOPs')) or (env.get('matmul_ceiling') or {}).get('reason')} TFLOP/s",
        "",
    ]
    checks = [(name, item) for name in CORRECTNESS for item in sections.get(name, {}).get("checks", [])]
    if checks:
        lines += [
            "## Correctness",
            "",
            "| section | check | status | errors (tolerance) |",
            "| --- | --- | --- | --- |",
        ]
        for name, item in checks:
            tol = item.get("tolerance") or {}
            errs = ", ".join(f"{k} {_cell(item.get(k))} ({_cell(v)})" for k, v in tol.items())
            lines.append(
                f"| {name} | {item.get('name')} | {item.get('status')} | {errs or item.get('reason') or item.get('error') or ''} |"
            )
        lines.append("")
    speed = sections.get("speed", {}).get("rows", [])
    if speed:
        lines += [
            "## Training throughput",
            "",
            "| config | batch | status | step ms | images/s | peak GiB | TFLOP/s | MFU |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in speed:
            mfu = row.get("mfu")
            lines.append(
                f"| {row.get('name')} | {row.get('batch')} | {row.get('status')} | {_cell(row.get('step_ms'))} | "
                f"{_cell(row.get('images_per_s'))} | {_cell(row.get('peak_GiB'))} | {_cell(row.get('TFLOPs'))} | "
                f"{'' if mfu is None else f'{100 * mfu:.1f} %'} |" + _note(row)
            )
        lines.append("")
    overheads = sections.get("overheads", {}).get("rows", [])
    if overheads:
        lines += [
            "## Overheads (step-time ratio to the plain step)",
            "",
            "| what | status | reference ms | candidate ms | ratio | recipe (amortised) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for row in overheads:
            lines.append(
                f"| {row.get('name')} | {row.get('status')} | {_cell(row.get('reference_ms'))} | {_cell(row.get('candidate_ms'))} | "
                f"{_cell(row.get('ratio'))} | {_cell(row.get('ratio_recipe_amortised'))} |" + _note(row)
            )
        lines.append("")
    sampling = sections.get("sampling", {})
    if sampling.get("rows"):
        lines += [
            f"## Sampling: {sampling.get('model')}, {sampling.get('sampler')}, batch {sampling.get('batch')}",
            "",
            "| backend | status | images/s | seconds |",
            "| --- | --- | --- | --- |",
        ]
        for row in sampling["rows"]:
            lines.append(
                f"| {row.get('name')} | {row.get('status')} | {_cell(row.get('images_per_s'))} | {_cell(row.get('seconds'))} |"
                + _note(row)
            )
        lines.append("")
    anchors = result.get("anchors")
    if anchors:
        fast = anchors["fast_dit_a100"]
        lines += [
            "## Anchors and targets",
            "",
            f"- fast-DiT, DiT-XL/2 on one A100: {fast['steps_per_s']} steps/s at batch {fast['batch']} = {fast['images_per_s']:.1f} images/s "
            f"x {fast['train_GFLOP_per_image']:.1f} GFLOP = {100 * fast['mfu']:.1f} % MFU (our FLOP count, 312 TFLOP/s peak)",
            f"- LightningDiT on H800: ~{100 * anchors['lightningdit_h800']['mfu']:.0f} % MFU (as reported)",
        ]
        for key, tgt in result.get("targets", {}).items():
            lines.append(
                f"- target {tgt['what']} {'>=' if key.startswith('mfu') else '<='} {tgt['limit']}: {tgt['status']}"
                + (f" ({_cell(tgt['value'])})" if "value" in tgt else "")
            )
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU, tiny sizes, fp32 timings; writes to a temporary directory",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default benchmarks/results; a temp dir for --dry-run)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=420.0,
        help=f"seconds in all, at most {MAX_BUDGET_S:.0f} (the watchdog stops the run there)",
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    parser.add_argument(
        "--wheels",
        type=Path,
        default=WHEELS_DIR,
        help="folder of carried wheels installed when xformers is missing",
    )
    args = parser.parse_args(argv)
    if not 0 < args.budget <= MAX_BUDGET_S:
        parser.error(f"--budget must be in (0, {MAX_BUDGET_S:.0f}] seconds, got {args.budget}")
    args.section_list = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.section_list) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; expected some of {list(SECTIONS)}")
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: this check needs a GPU; on CPU run it with --dry-run")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    plan = Plan(args.dry_run)
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="gpu_check_")) if args.dry_run else RESULTS_DIR)
    command = shlex.join(["python", "benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)])
    run = Run(plan, out_dir, args.budget, command, args.section_list)
    timer = run.watchdog()
    torch.manual_seed(0)
    print(f"gpu_check ({run.result['mode']}), budget {args.budget:.0f} s, writing {out_dir}", flush=True)
    try:
        xformers = xformers_status(plan, args.wheels)
        selected = set(args.section_list)
        steps: list[tuple[str, Callable[[], None]]] = [
            ("env", lambda: sec_env(run, plan, xformers)),
            ("attention", lambda: sec_attention(run, plan, xformers)),
            ("precision", lambda: sec_precision(run, plan)),
            ("checkpointing", lambda: sec_checkpointing(run, plan)),
            ("fsdp", lambda: sec_fsdp(run, plan)),
            ("compile", lambda: sec_compile(run, plan)),
            # the XL/2 rows, the overheads and sampling before the smaller sizes (the budget cuts the tail)
            ("speed", lambda: sec_speed(run, plan, xformers, plan.speed_sizes[:1])),
            ("sampling", lambda: sec_sampling(run, plan, xformers)),
            ("overheads", lambda: sec_overheads(run, plan)),
            ("speed", lambda: sec_speed(run, plan, xformers, plan.speed_sizes[1:])),
        ]
        if "env" not in selected:  # the xformers verdict is needed by the others: keep it
            run.sections["env"]["xformers"] = xformers
        for name, step in steps:
            if name not in selected:
                continue
            print(f"[{run.elapsed():6.1f} s] {name}", flush=True)
            run.current = name
            started = time.perf_counter()
            try:
                step()
            except Exception as exc:
                run.sections[name].update(
                    status="error", error=f"{type(exc).__name__}: {exc}", traceback=_tail()
                )
            spent = time.perf_counter() - started + run.sections[name].get("seconds", 0.0)
            run.sections[name]["seconds"] = round(spent, 2)
            run.save()
        anchors_and_targets(run)
        run.result["complete"] = True
        run.save()
    finally:
        timer.cancel()
    print(markdown(run.result), flush=True)
    print(f"written {out_dir / (NAME + '.json')} and {NAME}.md", flush=True)
    return run.result


if __name__ == "__main__":
    result = main()
    failed = [name for name in CORRECTNESS if result["sections"][name]["status"] in ("failed", "error")]
    sys.exit(1 if failed else 0)
