"""Training: the Trainer (one step = model.loss -> model.backward -> one clipping -> optimiser -> EMA ->
model.after_step), atomic locked checkpoints, the EMA and the torch.distributed helpers (DDP-free data
parallel, FSDP). Imports the core, the hub and data; never the evaluation nor the CLI."""

from zoo.train.trainer import (
    DIT_LR,
    LR_SCHEDULES,
    PRECISIONS,
    TINY_LR,
    TINY_PARAMS,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    add_train_arguments,
    config_from_args,
    default_lr,
    default_warmup,
    lr_factor,
    main_from_args,
    model_overrides_for,
)

__all__ = [
    "DIT_LR",
    "LR_SCHEDULES",
    "PRECISIONS",
    "TINY_LR",
    "TINY_PARAMS",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "add_train_arguments",
    "config_from_args",
    "default_lr",
    "default_warmup",
    "lr_factor",
    "main_from_args",
    "model_overrides_for",
]
