"""Trainer: EMA maths, atomic checkpoints and fallback, RNG capture, exact resume, signals, NaN skips, finetuning."""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from tests.trainkit import TINY, tiny_config
from zoo.data import TensorImageDataset, load_dataset
from zoo.train import Trainer, TrainingDiverged, add_train_arguments, config_from_args
from zoo.train.checkpoint import (
    NoCheckpointError,
    capture_rng_state,
    list_checkpoints,
    load_latest_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from zoo.train.ema import EMA

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------- EMA


def test_ema_follows_the_float64_recurrence_and_copies_buffers():
    torch.manual_seed(0)
    online = torch.nn.BatchNorm1d(3)
    online.weight.data.normal_()
    ema = EMA(online, decay=0.75)
    expected = online.weight.detach().double().clone()
    torch.testing.assert_close(ema.module.weight, online.weight)  # a copy at step 0
    for _ in range(5):
        online.weight.data.add_(torch.randn(3))
        online(torch.randn(4, 3))  # moves the running statistics (buffers)
        ema.update(online)
        expected = 0.75 * expected + 0.25 * online.weight.detach().double()
        torch.testing.assert_close(ema.module.weight.double(), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(ema.module.running_mean, online.running_mean)
    assert not ema.module.weight.requires_grad and not ema.module.training
    for bad in (1.5, 1.0, -0.1):
        with pytest.raises(ValueError, match=r"in \[0, 1\)"):
            EMA(online, decay=bad)


# -------------------------------------------------------------------------------------- checkpoints


def test_checkpoints_are_hashed_pruned_and_fall_back_when_corrupt(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint({"step": step, "weights": torch.full((3,), float(step))}, tmp_path, step, keep_last=3)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 3, 4]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == sorted(
        [f"step-{s:08d}.pt{suffix}" for s in (2, 3, 4) for suffix in ("", ".sha256")]
    )
    state, path = load_latest_checkpoint(tmp_path)
    assert state["step"] == 4 and path.name == "step-00000004.pt"
    newest = tmp_path / "checkpoints" / "step-00000004.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    newest.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="step-00000004.pt is unusable: sha256"):
        state, _ = load_latest_checkpoint(tmp_path)
    assert state["step"] == 3
    (tmp_path / "checkpoints" / "step-00000003.pt.sha256").unlink()  # an interrupted write
    with pytest.warns(UserWarning) as caught:
        state, _ = load_latest_checkpoint(tmp_path)
    reasons = [str(w.message) for w in caught]
    assert "step-00000004.pt is unusable: sha256" in reasons[0] and "sidecar is missing" in reasons[1]
    assert state["step"] == 2 and torch.equal(state["weights"], torch.full((3,), 2.0))
    with pytest.raises(NoCheckpointError, match="no usable checkpoint"):
        load_latest_checkpoint(tmp_path / "elsewhere")
    assert not list((tmp_path / "checkpoints").glob(".*tmp*"))  # no temporary files left


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    save_checkpoint({"rng": capture_rng_state()}, tmp_path, 0)
    expected = (random.random(), np.random.standard_normal(3), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    state, _ = load_latest_checkpoint(tmp_path)
    restore_rng_state(state["rng"])
    assert random.random() == expected[0]
    np.testing.assert_array_equal(np.random.standard_normal(3), expected[1])
    assert torch.equal(torch.rand(3), expected[2])


# ------------------------------------------------------------------------------------- exact resume


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path):
    whole = Trainer(tiny_config(tmp_path, steps=8, out=str(tmp_path / "whole")))
    whole.fit()
    first = Trainer(tiny_config(tmp_path, steps=4, out=str(tmp_path / "split")))
    first.fit()
    second = Trainer(tiny_config(tmp_path, steps=8, out=str(tmp_path / "split"), resume=True))
    summary = second.fit()
    assert summary["step"] == 8
    losses = [(r["step"], r["loss"], r["cluster_losses"]) for r in _log(tmp_path / "whole")]
    assert losses == [(r["step"], r["loss"], r["cluster_losses"]) for r in _log(tmp_path / "split")]
    assert len(losses) == 8 and len({loss for _, loss, _ in losses}) > 1
    for mine, theirs in zip(whole.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(mine, theirs)
    for mine, theirs in zip(whole.ema.state_dict().values(), second.ema.state_dict().values()):
        assert torch.equal(mine, theirs)
    assert not torch.equal(whole.model.balancer.log_vars, torch.zeros(5))  # UW's state trained and resumed
    # the final EMA model is a zoo weights folder with a card that records the run
    loaded = zoo.create(f"local-dir:{tmp_path / 'whole' / 'final'}")
    for key, value in loaded.net.state_dict().items():
        assert torch.equal(value, whole.ema.state_dict()[key])
    card = (tmp_path / "whole" / "final" / "README.md").read_text()
    assert "zoo train dit_t_dtr_uw_k5" in card and "--steps 8" in card and "digits" in card
    assert (tmp_path / "whole" / "final" / "samples.png").is_file()


def test_resume_refuses_to_overwrite_and_starts_fresh_without_checkpoints(tmp_path, capsys):
    config = tiny_config(tmp_path, steps=2)
    Trainer(config).fit()
    with pytest.raises(FileExistsError, match="pass --resume"):
        Trainer(config).fit()
    fresh = Trainer(tiny_config(tmp_path, steps=1, out=str(tmp_path / "new"), resume=True))
    assert fresh.fit()["step"] == 1
    assert "starting from step 0" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- step mechanics


def test_non_finite_steps_are_skipped_then_the_run_stops(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, max_bad_steps=2))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    x0, y = torch.zeros(10, 1, 8, 8), torch.arange(10)
    with pytest.warns(UserWarning, match="non-finite loss or gradient, update skipped"):
        logs = trainer.train_step(torch.full_like(x0, float("nan")), y)
    assert logs == {"skipped": True} and trainer.bad_steps_in_row == 1
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert trainer.train_step(x0, y)["skipped"] is False and trainer.bad_steps_in_row == 0
    nan_data = TensorImageDataset(
        torch.full((20, 1, 8, 8), float("nan")), torch.zeros(20, dtype=torch.long), 10
    )
    stopping = Trainer(tiny_config(tmp_path, out=str(tmp_path / "nan"), max_bad_steps=2), dataset=nan_data)
    with pytest.warns(UserWarning), pytest.raises(TrainingDiverged, match="2 consecutive non-finite steps"):
        stopping.fit()


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    overrides = {**TINY, "class_dropout_prob": 0.0}
    x0 = load_dataset("digits").images[:16]
    y = torch.arange(16) % 10
    t = torch.randint(0, 1000, (16,), generator=torch.Generator().manual_seed(0))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    results = []
    for accum, batch in ((1, 16), (2, 8)):
        config = tiny_config(
            tmp_path,
            model="dit_t",
            grad_accum=accum,
            batch=batch,
            overrides=overrides,
            out=str(tmp_path / f"acc{accum}"),
        )
        trainer = Trainer(config)
        trainer.train_step(x0, y, t, noise)
        results.append(trainer.model.net.state_dict())
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], atol=1e-6, rtol=1e-5)


def test_bf16_step_and_clear_errors(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, precision="bf16", grad_clip=0.5))
    logs = trainer.train_step(torch.zeros(10, 1, 8, 8), torch.arange(10))
    assert not logs["skipped"] and np.isfinite(logs["loss"])
    with pytest.raises(ValueError, match="--fsdp shards the model over the processes"):
        Trainer(tiny_config(tmp_path, fsdp=True))
    with pytest.raises(ValueError, match=r"gives \(C, H, W\) \(1, 8, 8\), the model expects \(1, 16, 16\)"):
        Trainer(tiny_config(tmp_path, overrides={**TINY, "input_size": 16}))
    with pytest.raises(ValueError, match="precision 'fp8' unknown"):
        tiny_config(tmp_path, precision="fp8")


def test_command_line_round_trip(tmp_path):
    config = tiny_config(tmp_path, grad_clip=1.0, compile=False, pretrained="x.y", overrides={"depth": 2})
    parser = add_train_arguments(argparse.ArgumentParser())
    argv = __import__("shlex").split(config.to_command())[2:]
    again = config_from_args(parser.parse_args(argv))
    again.progress = config.progress
    assert again == config


def test_finetune_plain_weights_into_a_routed_uw_recipe(tmp_path):
    plain = zoo.create("dit_t", input_size=8, in_channels=1, num_classes=10, **TINY)
    plain.save_pretrained(tmp_path / "plain")
    trainer = Trainer(tiny_config(tmp_path, steps=2, pretrained=str(tmp_path / "plain")))
    assert trainer.model.config["routing"]["name"] == "dtr" and trainer.model.config["mtl"]["name"] == "uw"
    for key, value in plain.net.state_dict().items():
        assert torch.equal(trainer.model.net.state_dict()[key], value), key
    summary = trainer.fit()
    assert np.isfinite(summary["final_loss"])
    moved = any(
        not torch.equal(trainer.model.net.state_dict()[k], v) for k, v in plain.net.state_dict().items()
    )
    assert moved


# -------------------------------------------------------------------------------------------- signals

SIGNAL_SCRIPT = """
import sys
from zoo.train import TrainConfig, Trainer
config = TrainConfig("dit_t_dtr_uw_k5", steps=100000, batch=10, out=sys.argv[1], ckpt_every=0, log_every=1,
                     progress=False, overrides={"hidden_size": 32, "depth": 2, "num_heads": 2})
print(Trainer(config).fit()["stopped_by"], flush=True)
"""


def test_sigterm_saves_a_loadable_checkpoint_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", SIGNAL_SCRIPT, str(run)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not ((run / "log.jsonl").is_file() and (run / "log.jsonl").read_text().count("\n") >= 2):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the training subprocess never logged a step"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert out.strip().endswith("SIGTERM")
    state, _ = load_latest_checkpoint(run)
    assert state["step"] >= 2
    resumed = Trainer(tiny_config(tmp_path, steps=state["step"] + 1, out=str(run), resume=True))
    resumed.resume()
    assert resumed.step == state["step"]


def test_famo_reevaluates_the_same_batch_after_each_step(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, model="dit_t_famo_k5", grad_accum=2))
    assert trainer.model.balancer.needs_after_step
    x0, y = load_dataset("digits").images[:10], torch.arange(10)
    for _ in range(2):
        assert not trainer.train_step(x0, y)["skipped"]
    assert not torch.equal(trainer.model.balancer.logits, torch.zeros(5, dtype=torch.float64))
