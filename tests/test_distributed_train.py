"""Two CPU processes (gloo) train exactly as one process on the union batch."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp

import zoo
from zoo.data import load_dataset
from zoo.train import TrainConfig, Trainer
from zoo.train.distributed import cleanup, init_distributed

MODEL = "dit_t_k5"  # linear balancer over 5 timestep clusters
OVERRIDES = {"hidden_size": 32, "depth": 2, "num_heads": 2, "class_dropout_prob": 0.0}
PER_RANK = 10
STEPS = 3


def _config(out: str, batch: int) -> TrainConfig:
    return TrainConfig(
        model=MODEL,
        batch=batch,
        steps=STEPS,
        lr=1e-3,
        out=out,
        progress=False,
        overrides=OVERRIDES,
        device="cpu",
    )


def _batches() -> list[tuple[torch.Tensor, ...]]:
    """Union batches of 2 x PER_RANK digits; each rank's half has stratified timesteps of its own."""
    images, labels = load_dataset("digits").images, load_dataset("digits").labels
    clusters = zoo.create(MODEL, input_size=8, in_channels=1, num_classes=10, **OVERRIDES).clusters
    generator = torch.Generator().manual_seed(0)
    batches = []
    for step in range(STEPS):
        index = torch.arange(2 * PER_RANK) + step * 2 * PER_RANK
        t = torch.cat([clusters.sample_timesteps(PER_RANK, generator=generator) for _ in range(2)])
        noise = torch.randn(2 * PER_RANK, 1, 8, 8, generator=generator)
        batches.append((images[index], labels[index], t, noise))
    return batches


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:

    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank),
        }
    )
    torch.set_num_threads(1)
    context = init_distributed("cpu")
    trainer = Trainer(_config(out_dir, PER_RANK), context=context)
    part = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    for x0, y, t, noise in _batches():
        trainer.train_step(x0[part], y[part], t[part], noise[part])
    torch.save(trainer.model.net.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    cleanup()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_equal_one_process_on_the_union_batch(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    single = Trainer(_config(str(tmp_path / "single"), 2 * PER_RANK))
    start = {k: v.clone() for k, v in single.model.net.state_dict().items()}
    for x0, y, t, noise in _batches():
        single.train_step(x0, y, t, noise)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    moved = 0
    for key, expected in single.model.net.state_dict().items():
        torch.testing.assert_close(ranks[0][key], ranks[1][key], atol=0, rtol=0)  # ranks stay in lockstep
        torch.testing.assert_close(ranks[0][key], expected, atol=1e-6, rtol=1e-5, msg=key)
        moved += not torch.equal(expected, start[key])
    assert moved > 10  # the steps really changed the weights
