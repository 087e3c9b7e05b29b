"""The training loop and `zoo train`: one step as ARCHITECTURE.md draws it, exact resume, data parallel.

One step: stratified timesteps and per-sample losses -> weighting -> cluster losses (all inside
`model.loss`), `model.backward` (the balancer) writes the gradients, averaged over ranks, of every
micro-batch; the summed, unscaled gradient is clipped once (`model.clip_grad_norm_`), the optimiser
steps, the EMA follows, and `model.after_step` lets balancers that ask for it (FAMO) re-evaluate the
same batch. Every random stream is seeded and checkpointed (data order, the timestep/noise
generator, the global torch RNG that drives label dropout, numpy and python), so a run interrupted
at step k and resumed reproduces the uninterrupted run bit for bit on CPU.

Several processes (torchrun): plain data parallel by default (the balancers average the gradients),
or `--fsdp`: the net and its EMA are sharded per block (zoo/train/distributed.py), FSDP averages the
gradients, and checkpoints are still full state dicts written by rank 0.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import shlex
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

import zoo
from zoo.clustering import list_samplers
from zoo.data import DataOrder, SeededBatchSampler, load_dataset
from zoo.data.images import save_grid
from zoo.diffusion import get_solver, list_processes, solvers_for
from zoo.hub.cards import pretrained_lineage
from zoo.train.checkpoint import (
    CheckpointSpaceError,
    RunLock,
    capture_rng_state,
    list_checkpoints,
    load_latest_checkpoint,
    remove_orphaned_temporaries,
    restore_rng_state,
    save_checkpoint,
)
from zoo.train.distributed import (
    DistributedContext,
    all_reduce_mean,
    broadcast_module,
    cleanup,
    full_optimizer_state_dict,
    full_state_dict,
    init_distributed,
    load_full_optimizer_state_dict,
    load_full_state_dict,
    reshard,
    shard_model,
)
from zoo.train.ema import EMA

#: every registered solver name (the model's process narrows it at start)
ALL_SOLVERS = sorted({name for process in list_processes() for name in solvers_for(process)})
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


LR_SCHEDULES = ("constant", "cosine")
#: models up to this many parameters train with TINY_LR by default (measured: the shipped digits and
#: MNIST recipes, benchmarks/results/train.json); larger ones with DiT's 1e-4 (the paper's, S to XL).
TINY_PARAMS = 5_000_000
TINY_LR = 2e-3
DIT_LR = 1e-4


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient, or weights that became non-finite."""


def default_lr(num_params: int) -> float:
    """`--lr` when not given: 2e-3 for tiny models (<= 5M parameters), DiT's 1e-4 otherwise."""
    return TINY_LR if num_params <= TINY_PARAMS else DIT_LR


def default_warmup(steps: int) -> int:
    """`--warmup` when not given: a linear warm-up over 5 % of the run, at most 1,000 steps."""
    return min(1000, steps // 20)


def lr_factor(step: int, steps: int, warmup: int, schedule: str) -> float:
    """The multiplier of the base lr at optimiser step `step` (0-based) of a `steps`-step run.

    Linear warm-up `(step + 1) / warmup` over the first `warmup` steps, then 1 (constant) or a half
    cosine from 1 down to 0 at `steps` (cosine).
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def _without_warmup_strength(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """A model config without the routing warm-up's mask strength (it follows the step, not the recipe)."""
    if not config or not isinstance(config.get("routing"), dict):
        return config
    return {**config, "routing": {k: v for k, v in config["routing"].items() if k != "strength"}}


@dataclass
class TrainConfig:
    """Everything a run needs; `zoo train` flags map one to one (dashes for underscores)."""

    model: str
    data: str = "digits"
    steps: int = 1000
    batch: int = 64
    lr: float | None = None  # None: default_lr(parameters)
    warmup: int | None = None  # None: default_warmup(steps)
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    ema: float = 0.9999
    ema_warmup_power: float = 2 / 3  # 0: constant decay `ema` from the first step
    precision: str = "fp32"
    grad_accum: int = 1
    grad_clip: float = 0.0  # 0: off; the step clips once with min(grad_clip, balancer.max_grad_norm)
    compile: bool = False
    grad_checkpointing: bool = False
    fsdp: bool = False
    seed: int = 0
    out: str = "runs/run"
    resume: bool = False
    pretrained: str | None = None
    routing_warmup: int | None = None
    image_size: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    timestep_sampler: str | None = None  # None: the recipe's (stratified unless its config names another)
    sample_every: int = 0
    sample_n: int = 64
    sample_steps: int = 250
    sample_sampler: str | None = None  # None: the first solver of the model's process (ddpm for DiT)
    sample_cfg: float = 1.0
    ckpt_every: int = 500
    keep_last: int = 3
    log_every: int = 10
    num_workers: int = 0
    max_bad_steps: int = 5
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} unknown; expected one of {sorted(PRECISIONS)}")
        for name in ("steps", "batch", "grad_accum", "keep_last", "log_every", "max_bad_steps", "sample_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("ckpt_every", "sample_every", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: off), got {getattr(self, name)}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {self.ema}")
        if not (math.isfinite(self.ema_warmup_power) and self.ema_warmup_power >= 0):
            raise ValueError(f"ema_warmup_power must be >= 0 (0: no warm-up), got {self.ema_warmup_power}")
        if self.warmup is not None and self.warmup < 0:
            raise ValueError(f"warmup must be >= 0 steps, got {self.warmup}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule {self.lr_schedule!r} unknown; expected one of {list(LR_SCHEDULES)}"
            )
        for name in ("weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not math.isfinite(self.sample_cfg):
            raise ValueError(f"sample_cfg must be a finite number, got {self.sample_cfg}")
        if self.sample_steps < 1:
            raise ValueError(f"sample_steps must be >= 1, got {self.sample_steps}")
        if self.routing_warmup is not None and self.routing_warmup < 0:
            raise ValueError(f"routing_warmup must be >= 0 (or None: automatic), got {self.routing_warmup}")

    def to_command(self) -> str:
        """The `zoo train` command line that reproduces this config."""
        defaults = TrainConfig(model=self.model)
        parts = ["zoo", "train", self.model]
        for item in dataclasses.fields(self):
            if item.name in ("model", "overrides", "progress"):
                continue
            value = getattr(self, item.name)
            if value == getattr(defaults, item.name):
                continue
            flag = "--" + item.name.replace("_", "-")
            parts += [flag] if value is True else [flag, str(value)]
        for key, value in sorted(self.overrides.items()):
            parts += ["--set", f"{key}={json.dumps(value)}"]
        return shlex.join(parts)


def model_overrides_for(dataset: Dataset) -> dict[str, Any]:
    """Backbone settings implied by the data: input size, channels and class count."""
    overrides: dict[str, Any] = {
        "input_size": int(dataset.image_size),
        "in_channels": int(dataset.channels),
        "num_classes": int(dataset.num_classes),
    }
    manifest = getattr(dataset, "manifest", None)
    if manifest and manifest.get("vae"):
        overrides["vae"] = {"repo": manifest["vae"], "scale": manifest["scale"]}
    return overrides


def _floats(logs: dict[str, Any]) -> dict[str, Any]:
    """Tensors in a log dict as floats / lists of floats (JSON-ready)."""
    out: dict[str, Any] = {}
    for key, value in logs.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().float().cpu()
            out[key] = value.item() if value.numel() == 1 else value.tolist()
        elif isinstance(value, (int, float, str, bool, list)) or value is None:
            out[key] = value
    return out


class Trainer:
    """Trains a zoo model: `Trainer(TrainConfig("dit_t_dtr_uw_k5", steps=2000, out="runs/x")).fit()`.

    `model` and `dataset` may be passed in (otherwise built from the config: `zoo.create` with the
    data's size, channels and classes as overrides); `context` places it in a process group.
    """

    def __init__(
        self,
        config: TrainConfig,
        model: torch.nn.Module | None = None,
        dataset: Dataset | None = None,
        context: DistributedContext | None = None,
    ) -> None:
        self.config = config
        self.context = context or init_distributed(config.device)
        self.device = (
            self.context.device
            if config.device is None
            else torch.device(
                config.device if not config.device.startswith("cuda") else f"cuda:{self.context.local_rank}"
            )
        )
        self.fsdp = config.fsdp
        if self.fsdp and not self.context.enabled:
            raise ValueError(
                "--fsdp shards the model over the processes of a torchrun launch and this is a single "
                "process; launch several (torchrun --nproc-per-node N -m zoo train ... --fsdp) or drop --fsdp"
            )
        self.run_dir = Path(config.out)
        self.dataset = (
            dataset if dataset is not None else load_dataset(config.data, "train", config.image_size)
        )
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        if model is None:
            overrides = {**model_overrides_for(self.dataset), **config.overrides}
            if config.grad_checkpointing:
                overrides["grad_checkpointing"] = True
            if config.timestep_sampler is not None:
                overrides["timestep_sampler"] = config.timestep_sampler
            with warnings.catch_warnings():  # the warm start below is what that warning asks for
                warnings.filterwarnings(
                    "ignore", message=".*these weights were trained (with|without) routing"
                )
                model = zoo.create(config.model, pretrained=config.pretrained or False, **overrides)
        elif config.grad_checkpointing:
            model.net.grad_checkpointing = True
        self.model = model.to(self.device).train()
        self._check_data_fits()
        self._check_sample_steps()
        num_params = sum(p.numel() for p in self.model.net.parameters())
        self.lr = config.lr if config.lr is not None else default_lr(num_params)
        self.warmup = config.warmup if config.warmup is not None else default_warmup(config.steps)
        if self.fsdp and getattr(self.model.balancer, "engine", None) == "autograd":
            raise ValueError(
                "--fsdp needs the Gram balancers' hook engine: engine='autograd' differentiates w.r.t. full "
                "parameters, which FSDP shards (drop the engine override)"
            )
        if self.fsdp and config.precision == "fp16" and self.model.balancer.parameter_groups():
            raise ValueError(
                f"--fsdp with --precision fp16 cannot train the {self.model.balancer.name!r} balancer's own "
                "parameters: GradScaler unscales FSDP-sharded and ordinary gradients in one kernel; use "
                "--precision bf16 (FSDP mixed precision) or fp32"
            )
        self._check_timestep_sampler()
        self.routing_warmup = self._warm_start()
        broadcast_module(self.model)
        self.ema_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.ema = EMA(
            self.model.net, config.ema, shadow=self.ema_model.net, warmup_power=config.ema_warmup_power
        )
        if self.fsdp:  # the EMA is sharded like the weights it follows: each rank averages its own shard
            shard_model(self.model.net, param_dtype=torch.bfloat16 if config.precision == "bf16" else None)
            shard_model(self.ema_model.net)
        if config.compile:
            self.model.net.compile()
        balancer_groups = list(self.model.balancer.parameter_groups())
        self.params = [p for p in self.model.net.parameters() if p.requires_grad]
        grouped = {id(p) for group in balancer_groups for p in group["params"]}
        self.all_params = self.params + [p for p in self.model.balancer.parameters() if id(p) in grouped]
        # CPU: torch's fused AdamW kernel (one pass over each tensor; the default there is a Python loop
        # of ~10 ops per tensor): 3-6x faster optimizer steps, equal up to rounding (benchmarks/NOTES.md
        # row 21). Sharded (FSDP) parameters and other devices keep torch's default.
        fused = {"fused": True} if self.device.type == "cpu" and not self.fsdp else {}
        self.optimizer = torch.optim.AdamW(
            [{"params": self.params}, *balancer_groups], lr=self.lr, weight_decay=config.weight_decay, **fused
        )
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]  # scaled by lr_factor
        self.autocast_dtype = PRECISIONS[config.precision]
        self.scaler = torch.amp.GradScaler(self.device.type) if config.precision == "fp16" else None
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(config.seed * 1_000_003 + self.context.rank)
        torch.manual_seed(config.seed * 1_000_003 + self.context.rank)  # label dropout differs per rank
        self.sampler = SeededBatchSampler(
            len(self.dataset),
            config.batch * config.grad_accum,
            seed=config.seed,
            rank=self.context.rank,
            world_size=self.context.world_size,
        )
        self.step = 0
        self.data_order = DataOrder()
        self.bad_steps_in_row = 0
        self.first_skipped_step: int | None = None  # the first step of the run whose update was skipped
        self.last_good_checkpoint: str | None = None  # newest checkpoint written before that step
        self.history: list[dict[str, Any]] = []  # settings changed on resume: {"at_step", "changed"}
        self.lock = None
        self.elapsed = 0.0
        self.last_logs: dict[str, Any] = {}
        self._stop_signal: int | None = None
        self._log_file = None
        self._tensorboard = None

    # ------------------------------------------------------------------ set-up

    def _check_data_fits(self) -> None:
        num_classes = int(getattr(self.model.net, "num_classes", 0) or 0)
        data_classes = int(getattr(self.dataset, "num_classes", 0) or 0)
        if num_classes and data_classes > num_classes:
            raise ValueError(
                f"data {self.config.data!r} has {data_classes} classes but the model has num_classes={num_classes}; "
                f"expected at most {num_classes} (override num_classes={data_classes})"
            )
        expected = tuple(self.model.sample_shape)
        actual = (int(self.dataset.channels), int(self.dataset.image_size), int(self.dataset.image_size))
        if expected != actual:
            raise ValueError(
                f"data {self.config.data!r} gives (C, H, W) {actual}, the model expects {expected}"
            )

    def _check_sample_steps(self) -> None:
        """The sample grid's solver fits the model's process and its step count is possible (before any work)."""
        model, config = self.model, self.config
        solver = config.sample_sampler or model.solvers[0]
        if solver not in model.solvers:
            raise ValueError(
                f"--sample-sampler {solver}: not a solver of the model's {model.diffusion.process!r} process; "
                f"expected one of {model.solvers}"
            )
        num_timesteps = model.diffusion.num_timesteps
        if hasattr(model.diffusion, "respace"):  # the Gaussian diffusion respaces its T steps
            try:
                model.diffusion.respace(config.sample_steps)
            except ValueError as error:
                raise ValueError(
                    f"--sample-steps {config.sample_steps}: the model's {num_timesteps}-step process cannot "
                    f"be respaced to it ({error}); expected 1..{num_timesteps}"
                ) from None
        least = getattr(get_solver(model.diffusion.process, solver), "min_steps", 1)
        if not least <= config.sample_steps <= num_timesteps:
            raise ValueError(
                f"--sample-steps {config.sample_steps}: {solver} on the model's {num_timesteps}-task process "
                f"takes {least}..{num_timesteps} steps"
            )

    def _check_timestep_sampler(self) -> None:
        """The sampler asked for is the model's; with several processes, the balancer gets what it needs.

        The balancers (mtl/base.py) compute the weights of the union batch when every process holds
        the same number of samples of each cluster: samplers without `equal_counts` (uniform, lognorm)
        are refused with several processes, except with linear weighting, whose fixed 1/K weights
        assume nothing about the counts.
        """
        sampler = self.model.timestep_sampler
        wanted = self.config.timestep_sampler
        if wanted is not None and wanted != sampler.name:
            raise ValueError(f"--timestep-sampler {wanted}: the model given samples with {sampler.name!r}")
        balancer = self.model.balancer.name
        if self.context.world_size > 1 and not sampler.equal_counts and balancer != "linear":
            raise ValueError(
                f"timestep sampler {sampler.name!r} draws different cluster counts on each of the "
                f"{self.context.world_size} processes, and the {balancer!r} balancer needs equal counts "
                "(mtl/base.py): use 'stratified' or 'curriculum', linear weighting, or one process"
            )
        if sampler.allow_empty and balancer == "famo":  # an empty cluster's 0 loss gets FAMO's 1/(L + eps)
            raise ValueError(
                f"timestep sampler {sampler.name!r} can leave clusters without samples, and FAMO weights a "
                "cluster by 1 / (its loss + eps): an empty one (loss 0) takes nearly all the weight and the "
                "others get none; use 'stratified' with FAMO"
            )
        if sampler.allow_empty and balancer == "uw":
            warnings.warn(
                f"timestep sampler {sampler.name!r} with UW: an empty cluster's log-variance gets the "
                "gradient 0.5 of its 0 loss, so it falls about lr per step while the cluster gets no samples "
                "(a curriculum's locked clusters) and that cluster weighs more when it gets samples again",
                stacklevel=3,
            )

    def _warm_start(self) -> int:
        """Warm start of pretrained weights: the balancer at linear weighting, the masks from all ones.

        Returns the routing warm-up length N: `--routing-warmup N`, or by default half the run when
        `--pretrained` weights of another routing go into a routed recipe (0 otherwise).
        """
        config, model = self.config, self.model
        routed = getattr(model.net, "router", None) is not None
        if config.routing_warmup is None:
            steps = config.steps // 2 if routed and getattr(model, "warm_start_needed", False) else 0
        else:
            steps = config.routing_warmup
        if steps and not routed:
            raise ValueError(f"--routing-warmup {steps}: {model.config['name']!r} has no routing to warm up")
        if config.pretrained:
            model.balancer.neutral_start()
        if routed and steps:
            model.apply_routing_warmup(0, steps)
            if self.context.is_main and not config.resume:
                print(f"warm start: routing masks annealed from all ones to the recipe's over {steps} steps")
        return steps

    def _apply_routing_warmup(self) -> None:
        """Mask strength for the next step (model and EMA alike), derived from the step.

        Until the warm-up ends the EMA equals the live weights: an average over weights fitted to
        other mask strengths does not fit the current masks (digits, EMA 0.995: FID 301 at the end of
        a 100-step warm-up where the live weights had 21; benchmarks/REPLICATION.md). The average
        starts afresh from the weights at step N, under the recipe's masks.
        """
        if self.routing_warmup:
            for model in (self.model, self.ema_model):
                model.apply_routing_warmup(self.step, self.routing_warmup)
            if 0 < self.step <= self.routing_warmup:
                self.ema.load_state_dict(self.model.net.state_dict())

    # ------------------------------------------------------------------ one step

    def _set_lr(self, step: int) -> None:
        """The lr of optimiser step `step` (0-based) on every group: base lr x warm-up / schedule (no sync)."""
        factor = lr_factor(step, self.config.steps, self.warmup, self.config.lr_schedule)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(
        self,
        x0: torch.Tensor,
        y: torch.Tensor | None,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """One optimiser step on a batch (split into `grad_accum` micro-batches); returns the step's logs.

        `t` and `noise` fix the timesteps and noise (else drawn from the trainer's generator). A step
        with a non-finite loss or gradient changes nothing and is reported with `skipped: True`.
        """
        model = self.model
        x0, y = (
            x0.to(self.device, non_blocking=True),
            None if y is None else y.to(self.device, non_blocking=True),
        )
        micro = self.config.grad_accum
        chunks = list(
            zip(*(part.chunk(micro) if part is not None else [None] * micro for part in (x0, y, t, noise)))
        )
        self._set_lr(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        cluster_sum = torch.zeros(model.clusters.k, device=self.device)
        logs: dict[str, Any] = {}
        finite = True
        for x_part, y_part, t_part, noise_part in chunks:
            with self._autocast():
                out = model.loss(x_part, y_part, t=t_part, noise=noise_part, generator=self.generator)
            finite_here = torch.isfinite(out.cluster_losses).all().float().reshape(1)
            if bool(all_reduce_mean(finite_here, self.context.world_size) < 1):  # every rank skips together
                finite = False
                break
            cluster_sum += out.cluster_losses.detach().float()
            # the balancer accumulates into .grad and averages it over processes (itself, or FSDP: mtl/base.py);
            # it does not clip: the summed gradient is clipped once below
            logs.update(_floats(model.backward(out, self.scaler, clip=False) or {}))
        if finite:
            if micro > 1:
                for param in self.all_params:
                    if param.grad is not None:
                        param.grad.div_(micro)
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            grad_norm = self._clip_grad_norm(logs)
            finite = bool(torch.isfinite(grad_norm))
        if not finite:
            return self._skip_step()
        self.bad_steps_in_row = 0
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.ema.update(self.model.net, step=self.step + 1)
        # balancers with needs_after_step (FAMO) compare with their last backward: the model re-evaluates
        # that (micro-)batch without grad; the balancer averages over ranks
        with self._autocast():
            logs.update(_floats(model.after_step(out)))
        cluster_losses = all_reduce_mean(cluster_sum / micro, self.context.world_size)
        return {
            **logs,
            "loss": float(cluster_losses.mean()),
            "cluster_losses": cluster_losses.tolist(),
            "grad_norm": float(grad_norm),
            "lr": self.optimizer.param_groups[0]["lr"],
            "skipped": False,
        }

    def clip_threshold(self) -> float | None:
        """The step's one clipping threshold: the tighter of `grad_clip` (when positive) and the balancer's
        `max_grad_norm` (part of its recipe, e.g. Nash-MTL's 1.0); None when neither is set."""
        thresholds = [self.config.grad_clip] if self.config.grad_clip > 0 else []
        if self.model.balancer.max_grad_norm is not None:
            thresholds.append(self.model.balancer.max_grad_norm)
        return min(thresholds) if thresholds else None

    def _clip_grad_norm(self, logs: dict[str, Any]) -> torch.Tensor:
        """Clip the accumulated, unscaled gradient once (`clip_threshold`); returns its norm before clipping.

        The norm covers every gradient the balancer wrote (the net's and its own, e.g. UW's
        log-variances) and is the same on every rank. With a balancer `max_grad_norm` the logs keep
        `grad_norm_before_clip` and `grad_clip` (the threshold used), as the balancer logged them.
        """
        threshold = self.clip_threshold()
        norm = self.model.clip_grad_norm_(threshold)
        if self.model.balancer.max_grad_norm is not None:
            logs["grad_norm_before_clip"] = float(norm)
            logs["grad_clip"] = threshold
        return norm

    def _skip_step(self) -> dict[str, Any]:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.update(self.scaler.get_scale() / 2)
        self.bad_steps_in_row += 1
        if self.first_skipped_step is None:
            self.first_skipped_step = self.step + 1
        warnings.warn(
            f"step {self.step + 1}: non-finite loss or gradient, update skipped "
            f"({self.bad_steps_in_row} in a row, stopping at {self.config.max_bad_steps})",
            stacklevel=2,
        )
        if self.bad_steps_in_row >= self.config.max_bad_steps:
            raise TrainingDiverged(
                f"{self.bad_steps_in_row} consecutive non-finite steps up to step {self.step + 1}; stopped. "
                + self.good_checkpoint_note()
            )
        return {"skipped": True}

    def good_checkpoint_note(self) -> str:
        """Where the run can be picked up after a divergence: the checkpoint pruning protects, checked on disk."""
        first = self.first_skipped_step
        newest = list_checkpoints(self.run_dir)
        newest_path = str(newest[-1][1]) if newest else None
        good = self.last_good_checkpoint if first is not None else newest_path
        if good is not None and Path(good).is_file():
            note = f"The last good checkpoint is {good}"
            note += f" (written before the first skipped step, {first})" if first is not None else ""
            if newest_path is not None and newest_path != good:
                note += f"; the newest is {newest_path}"
            return note + ": resume from it with a lower --lr (--resume picks the newest)."
        where = self.run_dir / "checkpoints"
        return f"No checkpoint was written before step {first or self.step} in {where}: start again with a lower --lr."

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs, RNG streams of every rank included (a collective when distributed)."""
        rng = {**capture_rng_state(), "loss_generator": self.generator.get_state()}
        if self.context.enabled:
            gathered: list[Any] = [None] * self.context.world_size
            torch.distributed.all_gather_object(gathered, rng)
            rng_per_rank = gathered
        else:
            rng_per_rank = [rng]
        if self.fsdp:  # gathered to full tensors on rank 0: the layout of a one-process checkpoint
            net, ema = full_state_dict(self.model.net), full_state_dict(self.ema_model.net)
            optimizer = full_optimizer_state_dict(self.optimizer)
        else:
            net, ema, optimizer = (
                self.model.net.state_dict(),
                self.ema.state_dict(),
                self.optimizer.state_dict(),
            )
        return {
            "step": self.step,
            "net": net,
            "ema": ema,
            "balancer": self.model.balancer.state_dict(),
            "timestep_sampler": json.dumps(self.model.timestep_sampler.state_dict()),
            "optimizer": optimizer,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "data_order": {"epoch": self.data_order.epoch, "position": self.data_order.position},
            "rng": rng_per_rank,
            "bad_steps_in_row": self.bad_steps_in_row,
            "first_skipped_step": self.first_skipped_step,
            "last_good_checkpoint": self.last_good_checkpoint,
            "history": json.dumps(self.history),
            "resolved": json.dumps(self.resolved_settings()),
            "routing_warmup": self.routing_warmup,
            "elapsed": self.elapsed,
            "world_size": self.context.world_size,
            "model_config": json.dumps(self.model.config),
            "train_config": json.dumps(dataclasses.asdict(self.config)),
        }

    def resolved_settings(self) -> dict[str, Any]:
        """The optimisation settings in force, defaults resolved (what the card records)."""
        return {
            "lr": self.lr,
            "warmup": self.warmup,
            "lr_schedule": self.config.lr_schedule,
            "steps": self.config.steps,
            "ema": self.config.ema,
            "ema_warmup_power": self.config.ema_warmup_power,
            "weight_decay": self.config.weight_decay,
            "grad_clip": self.config.grad_clip,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`; RNG streams are exact only for the same world size."""
        if self.fsdp:  # every rank holds the full checkpoint and keeps its own shards
            load_full_state_dict(self.model.net, state["net"])
            load_full_state_dict(self.ema_model.net, state["ema"])
            load_full_optimizer_state_dict(self.optimizer, state["optimizer"])
        else:
            self.model.net.load_state_dict(state["net"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base  # the requested lr, not the stored one (set per step by _set_lr)
        self.model.balancer.load_state_dict(state["balancer"])
        self.model.timestep_sampler.load_state_dict(json.loads(state.get("timestep_sampler", "{}")))
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.routing_warmup = int(state.get("routing_warmup", self.routing_warmup))  # the run's schedule
        self._apply_routing_warmup()
        self.data_order = DataOrder(**state["data_order"])
        self.bad_steps_in_row = int(state["bad_steps_in_row"])
        self.first_skipped_step = state.get("first_skipped_step")
        self.last_good_checkpoint = state.get("last_good_checkpoint")
        self.history = json.loads(state.get("history", "[]"))
        self.elapsed = float(state["elapsed"])
        if int(state["world_size"]) == self.context.world_size:
            rng = state["rng"][self.context.rank]
            restore_rng_state(rng)
            self.generator.set_state(rng["loss_generator"])
        else:
            warnings.warn(
                f"checkpoint was written by {state['world_size']} process(es), this run has "
                f"{self.context.world_size}: random streams are reseeded from (seed, step, rank), not resumed",
                stacklevel=2,
            )
            seed = self.config.seed * 1_000_003 + self.step * 1009 + self.context.rank
            torch.manual_seed(seed)
            self.generator.manual_seed(seed)

    def _weights_finite(self) -> bool:
        """Whether every weight of the net and its EMA is finite: one flag, read once (checkpoint time only)."""
        tensors = [p.detach() for p in [*self.model.net.parameters(), *self.ema_model.net.parameters()]]
        tensors = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]  # FSDP: this rank's shard
        flags = torch.stack([torch.isfinite(t).all() for t in tensors if t.numel()]).all().float().reshape(1)
        return bool(all_reduce_mean(flags, self.context.world_size) >= 1)

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 writes; every rank takes part).

        Weights that are no longer finite are never written: `TrainingDiverged` names the last good
        checkpoint instead. The newest checkpoint before the run's first skipped step is never pruned.
        """
        if not self._weights_finite():
            raise TrainingDiverged(
                f"the weights are no longer finite at step {self.step}; nothing written. "
                + self.good_checkpoint_note()
            )
        state = self.state_dict()
        if not self.context.is_main:
            return None
        protect = self.last_good_checkpoint if self.first_skipped_step is not None else None
        path = save_checkpoint(
            state, self.run_dir, self.step, keep_last=self.config.keep_last, protect=protect
        )
        if self.first_skipped_step is None:
            self.last_good_checkpoint = str(path)
        return path

    # recipe-defining settings a resume must not change; the others (lr, steps, schedule, EMA, logging,
    # checkpointing) may change and are applied and recorded in the card's history
    FIXED_ON_RESUME = ("model", "data", "image_size", "batch", "grad_accum", "seed", "precision")

    def _compare_with_checkpoint(self, state: dict[str, Any], path: Path) -> None:
        stored = json.loads(state.get("train_config", "{}"))
        if stored.get("model", self.config.model) != self.config.model:
            raise ValueError(
                f"{self.run_dir} holds a run of recipe {stored['model']!r} ({path}); you asked for "
                f"{self.config.model!r}. --resume continues the same recipe; to finetune its weights into "
                f"{self.config.model!r} start a new run: --pretrained {self.run_dir / 'final'} --out NEW_FOLDER"
            )
        stored_model = _without_warmup_strength(json.loads(state.get("model_config", "null")))
        requested = _without_warmup_strength(json.loads(json.dumps(self.model.config)))
        if stored_model is not None and requested != stored_model:
            keys = sorted(
                k
                for k in set(stored_model) | set(requested)
                if json.dumps(stored_model.get(k), sort_keys=True)
                != json.dumps(requested.get(k), sort_keys=True)
            )
            raise ValueError(
                f"{self.run_dir} holds a run whose model config differs from the requested one in {keys} "
                f"({path}): --resume continues the same model (drop the --set overrides that change it)"
            )
        different = {
            name: (stored[name], getattr(self.config, name))
            for name in self.FIXED_ON_RESUME
            if name in stored and stored[name] != getattr(self.config, name)
        }
        if different:
            listed = ", ".join(
                f"--{k.replace('_', '-')} {old} (stored) != {new}" for k, (old, new) in different.items()
            )
            raise ValueError(f"cannot resume {path} with other recipe settings: {listed}")
        before = json.loads(state.get("resolved", "{}"))
        if self.config.warmup is None and "warmup" in before:  # the default was resolved by the first run
            self.warmup = before["warmup"]
        now = self.resolved_settings()
        changed = {k: [before[k], v] for k, v in now.items() if k in before and before[k] != v}
        if changed:
            self.history_pending = {"at_step": int(state["step"]), "changed": changed}
            if self.context.is_main:
                listed = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
                print(f"resuming with changed settings (applied, recorded in the card): {listed}")

    def resume(self) -> bool:
        """Load the newest valid checkpoint of the run; False when the run has none yet."""
        if not list_checkpoints(self.run_dir):
            return False
        state, path = load_latest_checkpoint(self.run_dir)
        self.history_pending = None
        self._compare_with_checkpoint(state, path)
        self.load_state_dict(state)
        if self.history_pending:
            self.history.append(self.history_pending)
        if self.context.is_main:
            print(f"resumed from {path} at step {self.step}")
        return True

    # ------------------------------------------------------------------ logging and samples

    def _open_logs(self) -> None:
        if not self.context.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.run_dir / "log.jsonl", "a")  # closed at the end of fit()
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))

    def _log(self, record: dict[str, Any]) -> None:
        if self._log_file is None:
            return
        self._log_file.write(json.dumps(record) + "\n")
        self._log_file.flush()
        if self._tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    self._tensorboard.add_scalar(f"train/{key}", value, record["step"])
                elif isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
                    for index, item in enumerate(value):
                        self._tensorboard.add_scalar(f"train/{key}/{index}", item, record["step"])

    def sample_labels(self) -> torch.Tensor | None:
        """The fixed labels of the periodic grids: 0, 1, ..., K-1 repeated (None for unconditional models)."""
        num_classes = int(getattr(self.model.net, "num_classes", 0) or 0)
        if not num_classes:
            return None
        return torch.arange(self.config.sample_n) % num_classes

    def sample_grid(self, path: Path) -> Path:
        """Draw the EMA model's grid with a fixed seed and labels, leaving every training RNG untouched.

        Under FSDP every rank draws (the sharded EMA's forward is a collective) and rank 0 writes.
        """
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
            labels = self.sample_labels()
            images = self.ema_model.sample(
                labels,
                num_samples=self.config.sample_n,
                steps=self.config.sample_steps,
                sampler=self.config.sample_sampler,
                guidance=self.config.sample_cfg,
                generator=generator,
            )
        if self.fsdp:
            reshard(self.ema_model.net)
            if not self.context.is_main:
                return path
        nrow = int(getattr(self.model.net, "num_classes", 0) or 0) or math.isqrt(self.config.sample_n)
        upscale = max(1, 64 // images.shape[-1])
        return save_grid(images.clamp(-1, 1), path, nrow=min(nrow, self.config.sample_n), upscale=upscale)

    # ------------------------------------------------------------------ the loop

    def _install_signal_handlers(self) -> dict[int, Any]:
        def request_stop(signum: int, _frame: Any) -> None:
            self._stop_signal = signum

        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[signum] = signal.signal(signum, request_stop)
            except ValueError:  # not the main thread: leave signals to the caller
                pass
        return previous

    def _should_stop(self) -> bool:
        flag = torch.tensor([0.0 if self._stop_signal is None else 1.0], device=self.device)
        return bool(all_reduce_mean(flag, self.context.world_size) > 0)

    def _loader(self) -> DataLoader:
        self.sampler.start = self.data_order
        # its own generator: the loader draws a worker base seed, which must not move the global RNG
        worker_seeds = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.step)
        return DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.config.num_workers > 0,
            generator=worker_seeds,
        )

    def _take_run_folder(self) -> None:
        """Rank 0 locks the run folder and removes a killed run's temporary files; every rank learns the outcome."""
        error: BaseException | None = None
        if self.context.is_main:
            try:
                self.lock = RunLock(self.run_dir).acquire()
                count, size = remove_orphaned_temporaries(self.run_dir)
                if count:
                    print(
                        f"removed {count} orphaned checkpoint temporary file(s) ({size / 1e6:.1f} MB) of a killed run"
                    )
            except BaseException as caught:  # noqa: BLE001 - re-raised below, after telling the other ranks
                error = caught
        failed = torch.tensor([0.0 if error is None else 1.0], device=self.device)
        if bool(all_reduce_mean(failed, self.context.world_size) > 0):
            if error is not None:
                raise error
            raise RuntimeError(f"rank 0 could not take the run folder {self.run_dir}")

    def _release_run_folder(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _print_log_line(self, logs: dict[str, Any], samples_per_s: float) -> None:
        """The --no-progress line every --log-every steps."""
        if logs.get("skipped"):
            text = "update skipped (non-finite loss or gradient)"
        else:
            clusters = " ".join(f"{v:.4f}" for v in logs["cluster_losses"])
            text = (
                f"loss {logs['loss']:.4f} [{clusters}] lr {logs['lr']:.3g} grad_norm {logs['grad_norm']:.3g}"
            )
        print(
            f"step {self.step}/{self.config.steps} {text} {samples_per_s:.0f} samples/s {self.elapsed:.0f} s",
            flush=True,
        )

    def fit(self) -> dict[str, Any]:
        """Train up to `config.steps` in total (resuming when asked); returns a summary of the run.

        Divergence policy: a step with a non-finite loss or gradient is not applied and not
        checkpointed (a checkpoint due then is written at the next applied step); `max_bad_steps`
        such steps in a row, weights that are no longer finite at a checkpoint, or a run that reaches
        `steps` inside a streak of skipped steps raise `TrainingDiverged`, whose message names the last
        good checkpoint (the newest one written before the run's first skipped step, which pruning keeps).
        """
        self._take_run_folder()
        try:
            return self._fit()
        finally:
            self._release_run_folder()

    def _fit(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        config = self.config
        if config.resume:
            if not self.resume() and self.context.is_main:
                print(f"no checkpoint in {self.run_dir / 'checkpoints'}: starting from step 0")
        elif list_checkpoints(self.run_dir):
            raise FileExistsError(
                f"{self.run_dir} already holds checkpoints; pass --resume or choose another --out"
            )
        self._open_logs()
        previous_handlers = self._install_signal_handlers()
        stopped_by = None
        checkpoint_due = False
        logs: dict[str, Any] = {"skipped": False}
        start_time, window_start, window_samples = time.perf_counter(), time.perf_counter(), 0
        elapsed_before = self.elapsed
        global_batch = config.batch * config.grad_accum * self.context.world_size
        bar = tqdm(
            total=config.steps,
            initial=self.step,
            disable=not (config.progress and self.context.is_main),
            desc=config.model,
            dynamic_ncols=True,
        )
        try:
            batches = iter(self._loader())
            while self.step < config.steps:
                x0, y = next(batches)
                logs = self.train_step(x0, y)
                if not logs["skipped"]:  # the curriculum's pacing reads the step's (process-averaged) losses
                    logs.update(self.model.timestep_sampler.after_step(logs["cluster_losses"]) or {})
                self.data_order = self.sampler.advance(self.data_order)
                self.step += 1
                self._apply_routing_warmup()
                self.elapsed = elapsed_before + time.perf_counter() - start_time
                window_samples += global_batch
                bar.update(1)
                if not logs["skipped"]:
                    self.last_logs = logs
                    bar.set_postfix(
                        loss=f"{logs['loss']:.4f}",
                        clusters=" ".join(f"{v:.3f}" for v in logs["cluster_losses"]),
                        refresh=False,
                    )
                if self.step % config.log_every == 0 or self.step == config.steps:
                    now = time.perf_counter()
                    samples_per_s = window_samples / max(now - window_start, 1e-9)
                    window_start, window_samples = now, 0
                    self._log(
                        {"step": self.step, **logs, "samples_per_s": samples_per_s, "elapsed": self.elapsed}
                    )
                    if not config.progress and self.context.is_main:
                        self._print_log_line(logs, samples_per_s)
                sampling_rank = self.context.is_main or self.fsdp
                if config.sample_every and self.step % config.sample_every == 0 and sampling_rank:
                    self.sample_grid(self.run_dir / "samples" / f"step-{self.step:08d}.png")
                if self._should_stop():
                    stopped_by = signal.Signals(self._stop_signal or signal.SIGTERM).name
                    if not logs["skipped"]:  # a skipped step is never checkpointed
                        self.save()
                    break
                if config.ckpt_every and self.step % config.ckpt_every == 0:
                    checkpoint_due = True
                if checkpoint_due and not logs["skipped"] and self.step < config.steps:
                    self.save()
                    checkpoint_due = False
        finally:
            bar.close()
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
        summary: dict[str, Any] = {
            "step": self.step,
            "stopped_by": stopped_by,
            "wall_time_s": self.elapsed,
            "final_losses": self.last_logs.get("cluster_losses"),
            "final_loss": self.last_logs.get("loss"),
            "checkpoint": None,
        }
        try:
            if stopped_by is None and self.bad_steps_in_row:
                raise TrainingDiverged(
                    f"the run reached --steps {config.steps} inside {self.bad_steps_in_row} consecutive "
                    "non-finite steps: its weights give non-finite losses, so no final model is written. "
                    + self.good_checkpoint_note()
                )
            if stopped_by is None:
                if not self._weights_finite():
                    raise TrainingDiverged(
                        f"the weights are no longer finite at step {self.step}; no final model is written. "
                        + self.good_checkpoint_note()
                    )
                # the EMA model first: it is the run's result, and needs a fraction of a checkpoint's space
                final = self.finish() if self.context.is_main or self.fsdp else None
                summary["final_dir"] = str(final) if self.context.is_main else None
                try:
                    summary["checkpoint"] = self.save()
                except (
                    CheckpointSpaceError
                ) as error:  # the run is done; only extending it needs the checkpoint
                    newest = list_checkpoints(self.run_dir)
                    warnings.warn(
                        f"final checkpoint not written: {error}. The final model is complete in {final}; "
                        f"--resume to extend the run starts from {newest[-1][1] if newest else 'step 0'}",
                        stacklevel=2,
                    )
            elif self.context.is_main:
                newest = list_checkpoints(self.run_dir)
                summary["checkpoint"] = newest[-1][1] if newest else None
        finally:
            if self._log_file is not None:
                self._log_file.close()
            if self._tensorboard is not None:
                self._tensorboard.close()
        return summary

    def finish(self) -> Path:
        """Save the EMA model as RUN_DIR/final (zoo layout, with a card recording the run) and its grid.

        Under FSDP every rank calls it (gathering the EMA weights and sampling are collectives); rank 0 writes.
        """

        final = self.run_dir / "final"
        settings = self.resolved_settings()
        card = {
            "description": f"{self.config.model} trained with the zoo trainer on {self.config.data}.",
            "datasets": [self.config.data],
            "command": self.config.to_command(),
            "recipe": {
                "steps": self.step,
                "batch": self.config.batch * self.config.grad_accum * self.context.world_size,
                **settings,
                "lr_default": "given"
                if self.config.lr is not None
                else (f"default: {TINY_LR} for models of <= {TINY_PARAMS:,} parameters, else {DIT_LR}"),
                "warmup_default": "given"
                if self.config.warmup is not None
                else ("default: 5 % of the steps, at most 1,000"),
                "ema_decay_at_end": round(self.ema.current_decay(self.step), 6),
                "precision": self.config.precision,
                "seed": self.config.seed,
                "routing_warmup": self.routing_warmup,
                "wall_time_s": round(self.elapsed, 1),
                "processes": self.context.world_size,
                "resumed_with_changes": self.history,
            },
            "results": {
                "final_loss": self.last_logs.get("loss"),
                "final_cluster_losses": self.last_logs.get("cluster_losses"),
            },
            "load_name": f"local-dir:{final}",
            **pretrained_lineage(self.config.model, self.config.pretrained),  # licence follows the weights
        }
        weights = full_state_dict(self.ema_model.net) if self.fsdp else None
        # the EMA copy's balancer is the step-0 one: publish the trained balancer state (mtl.safetensors)
        self.ema_model.load_mtl_state_dict(self.model.mtl_state_dict())
        if self.context.is_main:
            self.ema_model.save_pretrained(final, card=card, state_dict=weights)
        self.sample_grid(final / "samples.png")
        return final


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of `zoo train NAME ...` (see TrainConfig)."""
    d = TrainConfig(model="")
    parser.add_argument("model", help="model name, e.g. dit_t_dtr_uw_k5")
    parser.add_argument("--data", default=d.data, help="digits | mnist | imagefolder:PATH | latents:DIR")
    parser.add_argument(
        "--steps", type=int, default=d.steps, help="total optimiser steps (also when resuming)"
    )
    parser.add_argument("--batch", type=int, default=d.batch, help="batch per process and micro-step")
    parser.add_argument(
        "--lr",
        type=float,
        default=d.lr,
        help=f"peak learning rate (default: {TINY_LR} for models of <= {TINY_PARAMS:,} parameters, "
        f"else DiT's {DIT_LR})",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=d.warmup,
        help="linear lr warm-up steps (default: 5%% of --steps, at most 1000)",
    )
    parser.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=d.lr_schedule,
        help="after the warm-up: constant, or cosine down to 0 at --steps (default: %(default)s)",
    )
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument(
        "--ema",
        type=float,
        default=d.ema,
        help="largest EMA decay, in [0, 1), reached gradually (see --ema-warmup-power)",
    )
    parser.add_argument(
        "--ema-warmup-power",
        type=float,
        default=d.ema_warmup_power,
        help="EMA decay warm-up 1-(1+step)^-power (timm ModelEmaV3): 0.994 at 2k steps, 0.999 at 31.6k "
        "(default: 2/3; 0: constant --ema from the first step)",
    )
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default=d.precision)
    parser.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per step")
    parser.add_argument(
        "--grad-clip",
        type=float,
        default=d.grad_clip,
        help="max gradient norm (0: off); a step clips once, with the tighter of this and the balancer's "
        "max_grad_norm (its recipe)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--grad-checkpointing", action="store_true", help="recompute blocks in backward")
    parser.add_argument(
        "--fsdp",
        action="store_true",
        help="shard weights, gradients, optimiser state and EMA over the torchrun processes "
        "(FSDP2, one unit per block; needs >= 2 processes; checkpoints stay full)",
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--out", default=None, help="run folder (default runs/NAME)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out up to --steps")
    parser.add_argument("--pretrained", default=None, help="start from weights: TAG, arch.tag or a path")
    parser.add_argument(
        "--routing-warmup",
        type=int,
        default=None,
        metavar="N",
        help="anneal the routing masks from all ones to the recipe's over N steps (default: half the run "
        "when --pretrained weights of another routing go into a routed recipe, else 0)",
    )
    parser.add_argument("--image-size", type=int, default=None, help="image side for imagefolder data")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="model override")
    parser.add_argument(
        "--timestep-sampler",
        choices=list_samplers(),
        default=d.timestep_sampler,
        help="which timesteps a batch draws (default: the recipe's, stratified); options: "
        "--set timestep_sampler_options={...}",
    )
    parser.add_argument(
        "--sample-every", type=int, default=d.sample_every, help="EMA grid every N steps (0: end)"
    )
    parser.add_argument("--sample-n", type=int, default=d.sample_n)
    parser.add_argument("--sample-steps", type=int, default=d.sample_steps)
    parser.add_argument(
        "--sample-sampler",
        choices=ALL_SOLVERS,
        default=d.sample_sampler,
        help="solver of the sample grids (default: the model's first, ddpm for DiT, euler for SiT)",
    )
    parser.add_argument("--sample-cfg", type=float, default=d.sample_cfg)
    parser.add_argument(
        "--ckpt-every", type=int, default=d.ckpt_every, help="checkpoint every N steps (0: only at the end)"
    )
    parser.add_argument(
        "--keep-last",
        type=int,
        default=d.keep_last,
        help="checkpoints kept (plus the last one before a non-finite step)",
    )
    parser.add_argument(
        "--log-every",
        type=int,
        default=d.log_every,
        help="log.jsonl record (and, with --no-progress, a printed line) every N steps",
    )
    parser.add_argument("--num-workers", type=int, default=d.num_workers)
    parser.add_argument(
        "--max-bad-steps",
        type=int,
        default=d.max_bad_steps,
        help="stop (rc 1) after N consecutive non-finite steps, naming the last good checkpoint",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A TrainConfig from parsed `zoo train` arguments."""
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=JSON, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"model", "overrides", "progress", "out"}
    values = {name: getattr(args, name) for name in names}
    return TrainConfig(
        model=args.model,
        out=args.out or os.path.join("runs", args.model),
        overrides=overrides,
        progress=not args.no_progress,
        **values,
    )


def main_from_args(args: argparse.Namespace) -> int:
    """`zoo train`: run (or resume) a training run; 0 on success or a clean signal stop, 1 on divergence."""

    try:
        trainer = Trainer(config_from_args(args))
        summary = trainer.fit()
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        cleanup()
    if summary["stopped_by"]:
        print(
            f"stopped by {summary['stopped_by']} at step {summary['step']}; newest checkpoint "
            f"{summary['checkpoint']} (resume with --resume)"
        )
    elif summary.get("final_dir"):
        print(
            f"done: {summary['step']} steps in {summary['wall_time_s']:.0f} s; EMA model in {summary['final_dir']}"
        )
    return 0
