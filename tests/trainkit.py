"""Shared pieces of the trainer tests: a tiny DiT and a tiny run config."""

from __future__ import annotations

from zoo.train import TrainConfig

TINY = {"hidden_size": 32, "depth": 2, "num_heads": 2}


def tiny_config(tmp_path, model="dit_t_dtr_uw_k5", **changes) -> TrainConfig:
    settings = {
        "model": model,
        "steps": 4,
        "batch": 10,
        "out": str(tmp_path / "run"),
        "ema": 0.9,
        "sample_steps": 3,
        "sample_n": 10,
        "ckpt_every": 2,
        "log_every": 1,
        "progress": False,
        "overrides": dict(TINY),
        "lr": 1e-3,
    }
    settings.update(changes)
    return TrainConfig(**settings)
