"""`--fsdp`: two CPU processes (gloo) with sharded weights train exactly as one process on the union batch.

One spawn runs every case (process start-up dominates): each balancer's 3 steps, then a checkpoint /
resume run whose checkpoints the main process loads and resumes in a single process.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import replace

import pytest
import torch
import torch.multiprocessing as mp

import zoo
from zoo.data import load_dataset
from zoo.train import TrainConfig, Trainer
from zoo.train.distributed import all_reduce_mean, cleanup, full_state_dict, init_distributed, shard_model

TINY = {"hidden_size": 32, "depth": 2, "num_heads": 2, "class_dropout_prob": 0.0}
PER_RANK = 10
STEPS = 3
CASES = {  # name: (model, TrainConfig changes, extra overrides)
    "linear": ("dit_t_k5", {}, {}),
    "uw": ("dit_t_dtr_uw_k5", {}, {"mtl_options": {"max_grad_norm": 0.05}}),  # clips sharded + plain
    "famo": ("dit_t_famo_k5", {}, {}),
    "nash": ("dit_t_dtr_nash_k5", {}, {"mtl_options": {"update_every": 2}}),  # update, held, update
    "pcgrad": ("dit_t_pcgrad_k5", {}, {}),
    "uw_accum_clip": ("dit_t_uw_k5", {"grad_accum": 2, "grad_clip": 0.05}, {}),
    "linear_recompute": ("dit_t_k5", {"grad_checkpointing": True}, {}),
}
RESUME = {
    "model": "dit_t_dtr_uw_k5",
    "batch": 5,
    "ckpt_every": 2,
    "sample_steps": 2,
    "sample_n": 4,
    "ema": 0.5,
    "log_every": 1,
}


def _config(case: str, out: str, batch: int, fsdp: bool) -> TrainConfig:
    model, changes, overrides = CASES[case]
    return TrainConfig(
        model=model,
        batch=batch // changes.get("grad_accum", 1),
        steps=STEPS,
        lr=1e-3,
        out=out,
        progress=False,
        overrides={**TINY, **overrides},
        device="cpu",
        fsdp=fsdp,
        **changes,
    )


def _resume_config(out: str, steps: int, fsdp: bool, resume: bool = False) -> TrainConfig:
    return TrainConfig(
        steps=steps, out=out, fsdp=fsdp, resume=resume, overrides=TINY, device="cpu", progress=False, **RESUME
    )


def _batches() -> list[tuple[torch.Tensor, ...]]:
    """Union batches of 2 x PER_RANK digits; each rank's half has stratified timesteps of its own."""
    data = load_dataset("digits")
    clusters = zoo.create("dit_t_k5", input_size=8, in_channels=1, num_classes=10, **TINY).clusters
    generator = torch.Generator().manual_seed(0)
    batches = []
    for step in range(STEPS):
        index = torch.arange(2 * PER_RANK) + step * 2 * PER_RANK
        t = torch.cat([clusters.sample_timesteps(PER_RANK // 2, generator=generator) for _ in range(4)])
        noise = torch.randn(2 * PER_RANK, 1, 8, 8, generator=generator)
        batches.append((data.images[index], data.labels[index], t, noise))
    return batches


def _train(trainer: Trainer, part: slice) -> list[float]:
    """The steps on this rank's share; with grad_accum 2 each half of it is one micro-batch."""
    losses = []
    for x0, y, t, noise in _batches():
        x0, y, t, noise = (v[part] for v in (x0, y, t, noise))
        losses.append(trainer.train_step(x0, y, t, noise)["loss"])
    return losses


def _join(rank: int, world_size: int, port: int):
    """Join the gloo group of the spawned processes, as torchrun's environment would."""

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
    return init_distributed("cpu")


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:

    context = _join(rank, world_size, port)
    results = {}
    for case in CASES:
        trainer = Trainer(_config(case, os.path.join(out_dir, case), PER_RANK, fsdp=True), context=context)
        assert all(type(p).__name__ == "DTensor" for p in trainer.params)
        losses = _train(trainer, slice(rank * PER_RANK, (rank + 1) * PER_RANK))
        results[case] = {
            "losses": losses,
            "net": full_state_dict(trainer.model.net),
            "ema": full_state_dict(trainer.ema_model.net),  # sharded like the weights, gathered here
            "balancer": trainer.model.balancer.state_dict(),
        }
    # a non-finite loss on one rank: both skip, nothing moves
    before = full_state_dict(trainer.model.net)
    x0 = torch.zeros(PER_RANK, 1, 8, 8)
    with pytest.warns(UserWarning, match="update skipped"):
        logs = trainer.train_step(x0 if rank else x0.fill_(float("nan")), torch.arange(len(x0)))
    after = full_state_dict(trainer.model.net)
    results["skip"] = logs["skipped"] and all(torch.equal(before[k], after[k]) for k in before)
    # what cannot work is refused before anything is sharded
    refused = {
        "autograd": replace(
            _config("nash", out_dir, PER_RANK, True),
            overrides={**TINY, "mtl_options": {"engine": "autograd"}},
        ),
        "fp16": replace(_config("uw", out_dir, PER_RANK, True), precision="fp16"),
    }
    for name, config in refused.items():
        with pytest.raises(ValueError) as error:
            Trainer(config, context=context)
        results[f"refused_{name}"] = str(error.value)
    # checkpoint / resume: 4 steps straight vs 2 + resume to 4
    Trainer(_resume_config(os.path.join(out_dir, "whole"), 4, True), context=context).fit()
    Trainer(_resume_config(os.path.join(out_dir, "split"), 2, True), context=context).fit()
    resumed = Trainer(_resume_config(os.path.join(out_dir, "split"), 4, True, resume=True), context=context)
    resumed.fit()
    results["resumed_net"] = full_state_dict(resumed.model.net)
    results["resumed_ema"] = full_state_dict(resumed.ema_model.net)
    if rank == 0:
        torch.save(results, os.path.join(out_dir, "results.pt"))
    _leave()


def _leave() -> None:
    """Leave the group and exit without finalizing the interpreter.

    gloo's worker thread may still be dropping the last collectives' tensors; if that runs into the
    interpreter's finalization it cannot take the GIL and the process dies of SIGABRT ("terminate
    called without an active exception", now and then, after the test's work is done).
    """

    cleanup()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log(run) -> list[tuple]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["cluster_losses"]) for r in records]


def test_fsdp_equals_one_process_and_its_checkpoints_resume_anywhere(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = torch.load(tmp_path / "results.pt", weights_only=True)
    union = slice(0, 2 * PER_RANK)
    for case in CASES:
        single = Trainer(_config(case, str(tmp_path / f"single_{case}"), 2 * PER_RANK, fsdp=False))
        start = {k: v.clone() for k, v in single.model.net.state_dict().items()}
        losses = _train(single, union)
        torch.testing.assert_close(results[case]["losses"], losses, atol=1e-6, rtol=1e-6, msg=case)
        moved = 0
        for key, expected in single.model.net.state_dict().items():
            torch.testing.assert_close(results[case]["net"][key], expected, atol=1e-6, rtol=1e-5, msg=key)
            moved += not torch.equal(expected, start[key])
        assert moved > 10, case  # the steps really changed the weights
        for key, expected in single.ema.state_dict().items():
            torch.testing.assert_close(results[case]["ema"][key], expected, atol=1e-6, rtol=1e-5, msg=key)
        for key, expected in single.model.balancer.state_dict().items():
            if expected.is_floating_point():
                torch.testing.assert_close(
                    results[case]["balancer"][key], expected, atol=1e-6, rtol=1e-5, equal_nan=True
                )
    assert results["skip"]
    assert "needs the Gram balancers' hook engine" in results["refused_autograd"]
    assert "fp16 cannot train the 'uw' balancer's own parameters" in results["refused_fp16"]
    # the resumed FSDP run reproduces the uninterrupted one
    assert _log(tmp_path / "whole") == _log(tmp_path / "split") and len(_log(tmp_path / "whole")) == 4
    whole = torch.load(tmp_path / "whole" / "checkpoints" / "step-00000004.pt", weights_only=True)
    for part in ("net", "ema"):
        for key, value in whole[part].items():
            assert torch.equal(results[f"resumed_{part}"][key], value), key
    # an FSDP checkpoint is a one-process checkpoint: it loads and resumes without FSDP
    single = Trainer(_resume_config(str(tmp_path / "whole"), 6, False, resume=True))
    with pytest.warns(UserWarning, match="written by 2 process"):
        single.resume()
    for key, value in whole["net"].items():
        assert torch.equal(single.model.net.state_dict()[key], value), key
    for key, value in whole["ema"].items():
        assert torch.equal(single.ema.state_dict()[key], value), key
    assert (
        single.optimizer.state_dict()["state"][0]["exp_avg"].shape
        == whole["net"]["x_embedder.proj.weight"].shape
    )
    assert single.train_step(torch.zeros(5, 1, 8, 8), torch.arange(5))["skipped"] is False
    # the final EMA folder written under FSDP is the gathered EMA
    final = zoo.create(f"local-dir:{tmp_path / 'whole' / 'final'}")
    for key, value in final.net.state_dict().items():
        assert torch.equal(value, whole["ema"][key]), key
    assert (tmp_path / "whole" / "final" / "samples.png").is_file()


def test_fsdp_is_refused_in_a_single_process(tmp_path):
    with pytest.raises(ValueError, match="single process.*torchrun --nproc-per-node N"):
        Trainer(_config("linear", str(tmp_path / "run"), PER_RANK, fsdp=True))


# ------------------------------------------------- a custom loop: model.loss + model.backward + a step

# a plain balancer and a Gram one; the clipping norm needs every parameter backward() is given, root's included
CUSTOM = {"linear": "dit_t_k5", "pcgrad": "dit_t_pcgrad_k5"}
CLIP = {"mtl_options": {"max_grad_norm": 0.05}}


def _tiny(model_name: str) -> zoo.DiffusionModel:
    torch.manual_seed(0)  # the same initial weights everywhere
    return zoo.create(model_name, input_size=8, in_channels=1, num_classes=10, **TINY, **CLIP).train()


def _custom_loop(model: zoo.DiffusionModel, part: slice) -> list[torch.Tensor]:
    """`out = model.loss(...); model.backward(out); optimizer.step()` on this process's share of the batches.

    Each step first evaluates the loss without grad (as a loop that logs one would): under FSDP that
    forward leaves the root's parameters unsharded views, which the next `loss` must not take for its own.
    """
    optimizer = torch.optim.AdamW(model.net.parameters(), lr=1e-3)
    losses = []
    for x0, y, t, noise in _batches():
        x0, y, t, noise = (v[part] for v in (x0, y, t, noise))
        with torch.no_grad():
            model.loss(x0, y, t=t, noise=noise)
        optimizer.zero_grad(set_to_none=True)
        out = model.loss(x0, y, t=t, noise=noise)
        model.backward(out)
        optimizer.step()
        losses.append(out.cluster_losses.detach().clone())
    return losses


def _custom_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:

    _join(rank, world_size, port)
    results = {}
    for case, model_name in CUSTOM.items():
        model = _tiny(model_name)
        shard_model(model.net)  # as the trainer shards it
        assert all(type(p).__name__ == "DTensor" for p in model.net.parameters())
        losses = _custom_loop(model, slice(rank * PER_RANK, (rank + 1) * PER_RANK))
        results[case] = {
            "losses": [all_reduce_mean(loss, world_size) for loss in losses],  # equal cluster counts per rank
            "net": full_state_dict(model.net),
        }
    if rank == 0:
        torch.save(results, os.path.join(out_dir, "custom.pt"))
    _leave()


def test_a_custom_loop_with_model_backward_under_fsdp_equals_one_process(tmp_path):
    """`model.backward(out)` writes the sharded parameters' gradients, not those of the root's unsharded views."""
    mp.spawn(_custom_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = torch.load(tmp_path / "custom.pt", weights_only=True)
    for case, model_name in CUSTOM.items():
        single = _tiny(model_name)
        start = {k: v.clone() for k, v in single.net.state_dict().items()}
        losses = _custom_loop(single, slice(0, 2 * PER_RANK))
        torch.testing.assert_close(
            results[case]["losses"], losses, atol=1e-6, rtol=1e-6, msg=lambda m, name=case: f"{name}: {m}"
        )
        moved = 0
        for key, expected in single.net.state_dict().items():
            torch.testing.assert_close(
                results[case]["net"][key],
                expected,
                atol=1e-6,
                rtol=1e-5,
                msg=lambda m, name=f"{case} {key}": f"{name}: {m}",
            )
            moved += not torch.equal(expected, start[key])
        assert moved > 10, case  # the steps really changed the weights
