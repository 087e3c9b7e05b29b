"""Trainer trust (issues 14 and 15): impossible flags refused up front, divergence never loses the last
good checkpoint, resume checks, one run per folder, temporary files and ENOSPC, writable outputs,
EMA / lr warm-up and schedules, defaults recorded in the card, --no-progress log lines."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import zoo.eval.metrics
import zoo.eval.sampling
import zoo.train.checkpoint as checkpoint
from tests.trainkit import TINY, tiny_config
from zoo.cli import main as cli
from zoo.data import SeededBatchSampler, TensorImageDataset, load_dataset
from zoo.train import (
    DIT_LR,
    TINY_LR,
    Trainer,
    TrainingDiverged,
    default_lr,
    default_warmup,
    lr_factor,
)
from zoo.train.checkpoint import (
    CheckpointSpaceError,
    RunLock,
    RunLockedError,
    ensure_writable,
    list_checkpoints,
    load_latest_checkpoint,
    save_checkpoint,
    state_nbytes,
)
from zoo.train.ema import EMA

ROOT = Path(__file__).resolve().parents[1]

TINY_FLAGS = ["--set", "hidden_size=32", "--set", "depth=2", "--set", "num_heads=2"]
SMALL_RUN = ["--batch", "10", "--sample-steps", "3", "--sample-n", "10", "--no-progress"]


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _weights_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for part in ("net", "ema") for v in state[part].values())


# ------------------------------------------------------------------------------ impossible flags


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lr", "inf"], "lr must be a finite number > 0, got inf"),
        (["--lr", "nan"], "lr must be a finite number > 0, got nan"),
        (["--lr", "0"], "lr must be a finite number > 0, got 0.0"),
        (["--lr=-1e-3"], "lr must be a finite number > 0, got -0.001"),
        (["--ema", "1"], r"ema decay must be in \[0, 1\), got 1.0"),
        (["--ema", "-0.1"], r"ema decay must be in \[0, 1\)"),
        (["--ema", "nan"], r"ema decay must be in \[0, 1\)"),
        (["--ckpt-every", "-1"], "ckpt_every must be >= 0"),
        (["--sample-every", "-5"], "sample_every must be >= 0"),
        (["--sample-steps", "2000"], "--sample-steps 2000: the model's 1000-step process cannot be respaced"),
        (["--sample-steps", "0"], "sample_steps must be >= 1"),
        (["--warmup", "-1"], "warmup must be >= 0"),
        (["--ema-warmup-power", "-1"], "ema_warmup_power must be >= 0"),
    ],
)
def test_impossible_flags_are_refused_before_any_work(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    rc = cli(["train", "dit_t_dtr_uw_k5", *TINY_FLAGS, *SMALL_RUN, "--steps", "2", "--out", str(out), *flags])
    assert rc == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()  # nothing trained, nothing written


# ----------------------------------------------------------------------------------- divergence


def test_lr_1e30_stops_with_rc_1_naming_a_checkpoint_that_exists(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "dit_t_dtr_uw_k5", *TINY_FLAGS, *SMALL_RUN, "--out", str(out), "--log-every", "1"]
    argv += ["--steps", "8", "--ckpt-every", "1", "--keep-last", "3", "--lr", "1e30", "--max-bad-steps", "3"]
    with pytest.warns(UserWarning, match="non-finite loss or gradient"):
        rc = cli(argv)
    assert rc == 1
    err = capsys.readouterr().err
    named = re.search(r"last good checkpoint is (\S+\.pt)", err)
    assert named, err
    assert Path(named.group(1)).is_file()
    skipped = {r["step"] for r in _log(out) if r["skipped"]}
    assert skipped, "1e30 must make later steps non-finite"
    for step, path in list_checkpoints(out):
        assert step not in skipped and step < min(skipped)  # a skipped step is never checkpointed
        state = torch.load(path, weights_only=True)
        assert _weights_finite(state)
    assert not (out / "final").exists() and not (out / "train.lock").exists()


def test_a_run_that_ends_inside_a_streak_of_skipped_steps_writes_no_final_model(tmp_path):
    # three steps < max_bad_steps: step 1 moves the weights to ~1e30, the next ones are non-finite
    config = tiny_config(tmp_path, steps=3, lr=1e30, ckpt_every=1, warmup=0)
    with pytest.warns(UserWarning), pytest.raises(TrainingDiverged, match="reached --steps 3 inside"):
        Trainer(config).fit()
    assert not (tmp_path / "run" / "final").exists()


def test_pruning_keeps_the_last_checkpoint_before_the_first_skipped_step(tmp_path):
    data = load_dataset("digits")
    images, labels = data.images[:30].clone(), data.labels[:30].clone()
    sampler = SeededBatchSampler(30, 10, seed=0)
    epochs = [sampler.permutation(e).tolist() for e in range(3)]
    last_batch = set(epochs[2][20:30])  # step 9
    poison = next(i for i in epochs[0][10:20] if i not in last_batch)  # in step 2's batch, not step 9's
    images[poison] = float("nan")
    dataset = TensorImageDataset(images, labels, 10)
    config = tiny_config(tmp_path, steps=9, ckpt_every=1, keep_last=1, warmup=0)
    trainer = Trainer(config, dataset=dataset)
    with pytest.warns(UserWarning, match="update skipped"):
        trainer.fit()
    skipped = [r["step"] for r in _log(tmp_path / "run") if r["skipped"]]
    assert skipped[0] == 2 and 9 not in skipped
    kept = [step for step, _ in list_checkpoints(tmp_path / "run")]
    assert kept == [1, 9]  # keep-last 1 plus the last one before the first skipped step
    assert trainer.first_skipped_step == 2 and trainer.last_good_checkpoint.endswith("step-00000001.pt")
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    trainer = Trainer(tiny_config(tmp_path))
    trainer.save()
    with torch.no_grad():
        next(trainer.model.net.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(
        TrainingDiverged, match=r"no longer finite .*last good checkpoint is .*step-00000000.pt"
    ):
        trainer.save()
    assert [step for step, _ in list_checkpoints(tmp_path / "run")] == [0]


# ---------------------------------------------------------------------------------------- resume


def test_resume_refuses_another_recipe_or_model_and_applies_a_new_lr(tmp_path, capsys):
    Trainer(tiny_config(tmp_path, steps=2, warmup=0)).fit()
    with pytest.raises(ValueError, match=r"recipe 'dit_t_dtr_uw_k5'.*asked for 'dit_t_uw_k5'.*--pretrained"):
        Trainer(tiny_config(tmp_path, model="dit_t_uw_k5", steps=4, resume=True)).fit()
    with pytest.raises(ValueError, match=r"model config differs .*'backbone'"):
        Trainer(tiny_config(tmp_path, steps=4, resume=True, overrides={**TINY, "hidden_size": 64})).fit()
    with pytest.raises(ValueError, match=r"--batch 10 \(stored\) != 20"):
        Trainer(tiny_config(tmp_path, steps=4, resume=True, batch=20)).fit()
    assert not (tmp_path / "run" / "train.lock").exists()  # every refusal released the lock
    resumed = Trainer(tiny_config(tmp_path, steps=4, resume=True, lr=5e-4, warmup=0))
    resumed.fit()
    assert "changed settings (applied, recorded in the card): lr 0.001 -> 0.0005" in capsys.readouterr().out
    assert [r["lr"] for r in _log(tmp_path / "run")] == [1e-3, 1e-3, 5e-4, 5e-4]
    card = (tmp_path / "run" / "final" / "README.md").read_text()
    recipe = json.loads(card.split("## Training\n\n```\n", 1)[1].split("```", 1)[0])
    assert recipe["lr"] == 5e-4
    assert recipe["resumed_with_changes"] == [
        {"at_step": 2, "changed": {"lr": [1e-3, 5e-4], "steps": [2, 4]}}
    ]


# ------------------------------------------------------------------------------------- run lock


def test_a_second_trainer_on_the_same_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    with RunLock(run) as lock:  # a live holder: this very process
        record = json.loads(lock.path.read_text())
        assert record["pid"] == os.getpid() and record["host"] and record["started"]
        with pytest.raises(RunLockedError, match=rf"in use by another trainer \(pid {os.getpid()}, host"):
            Trainer(tiny_config(tmp_path)).fit()
        assert not (run / "log.jsonl").exists()
    assert not lock.path.exists()


def test_a_lock_of_a_dead_process_is_taken_over_with_a_note(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {"pid": dead.pid, "host": __import__("socket").gethostname(), "started": "yesterday"}
    (run / "train.lock").write_text(json.dumps(record))
    with pytest.warns(UserWarning, match=rf"taking over the lock of process {dead.pid} .*no longer running"):
        Trainer(tiny_config(tmp_path, steps=1)).fit()
    assert (run / "final").is_dir() and not (run / "train.lock").exists()


LOCK_SCRIPT = """
import sys
from zoo.train import TrainConfig, Trainer
config = TrainConfig("dit_t_dtr_uw_k5", steps=100000, batch=10, out=sys.argv[1], ckpt_every=0, log_every=1,
                     progress=False, overrides={"hidden_size": 32, "depth": 2, "num_heads": 2})
print(Trainer(config).fit()["stopped_by"], flush=True)
"""


def test_the_lock_is_held_for_the_whole_run_of_another_process(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", LOCK_SCRIPT, str(run)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 180
        while not ((run / "log.jsonl").is_file() and (run / "log.jsonl").read_text().count("\n") >= 1):
            assert process.poll() is None and time.monotonic() < deadline, "the trainer never logged a step"
            time.sleep(0.2)
        assert json.loads((run / "train.lock").read_text())["pid"] == process.pid
        with pytest.raises(RunLockedError, match=rf"pid {process.pid}"):
            RunLock(run).acquire()
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=120)
    assert out.strip().endswith("SIGTERM") and not (run / "train.lock").exists()


# ------------------------------------------------------------------------- temp files and ENOSPC


def test_orphaned_temporary_files_of_a_killed_run_are_removed_at_start(tmp_path, capsys):
    directory = tmp_path / "run" / "checkpoints"
    directory.mkdir(parents=True)
    orphans = [directory / ".step-00000002.pt.tmp4242", directory / ".step-00000002.pt.sha256.tmp4242"]
    for path in orphans:
        path.write_bytes(b"x" * 150_000)
    keep = directory / "notes.txt"
    keep.write_text("not ours")
    Trainer(tiny_config(tmp_path, steps=1)).fit()
    assert not any(path.exists() for path in orphans) and keep.is_file()
    assert "removed 2 orphaned checkpoint temporary file(s) (0.3 MB)" in capsys.readouterr().out


class _FullDisk:
    """A file whose disk fills after `limit` bytes: write raises OSError(ENOSPC) as the kernel would."""

    def __init__(self, handle, limit: int) -> None:
        self.handle, self.limit, self.written = handle, limit, 0

    def write(self, data) -> int:
        if self.written + len(data) > self.limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written += len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def _fill_disk_after(monkeypatch, limit: int) -> None:
    monkeypatch.setattr(
        checkpoint, "_write_state", lambda state, handle: torch.save(state, _FullDisk(handle, limit))
    )


def test_enospc_deletes_the_partial_file_keeps_the_last_good_checkpoint_and_says_how_much(
    tmp_path, monkeypatch
):
    good = {"step": 1, "weights": torch.ones(1000)}
    save_checkpoint(good, tmp_path, 1, keep_last=1)
    _fill_disk_after(monkeypatch, 2000)  # mid-write
    big = {"step": 2, "weights": torch.zeros(3_000_000)}  # 12 MB
    with pytest.raises(
        CheckpointSpaceError, match=rf"no space left on {tmp_path / 'checkpoints'}, about 12 MB needed"
    ):
        save_checkpoint(big, tmp_path, 2, keep_last=1)
    assert state_nbytes(big) == 12_000_000
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-00000001.pt",
        "step-00000001.pt.sha256",
    ]
    state, _ = load_latest_checkpoint(tmp_path)
    assert state["step"] == 1 and torch.equal(state["weights"], good["weights"])


def test_a_full_disk_stops_training_cleanly_and_resume_works_afterwards(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tmp_path, steps=6, ckpt_every=2))
    original = checkpoint._write_state
    calls = []

    def full_after_first(state, handle):
        calls.append(state["step"])
        if len(calls) > 1:
            return torch.save(state, _FullDisk(handle, 4096))
        return original(state, handle)

    monkeypatch.setattr(checkpoint, "_write_state", full_after_first)
    with pytest.raises(CheckpointSpaceError, match="no space left on .* MB needed"):
        trainer.fit()
    assert [step for step, _ in list_checkpoints(tmp_path / "run")] == [2]
    assert not list((tmp_path / "run" / "checkpoints").glob(".*tmp*"))
    assert not (tmp_path / "run" / "train.lock").exists()
    monkeypatch.setattr(checkpoint, "_write_state", original)
    resumed = Trainer(tiny_config(tmp_path, steps=6, ckpt_every=2, resume=True))
    assert resumed.fit()["step"] == 6


def test_finishing_needs_no_room_for_another_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tmp_path, steps=4, ckpt_every=2, keep_last=1))
    original = checkpoint._write_state

    def full_at_the_end(state, handle):
        if state["step"] == 4:
            return torch.save(state, _FullDisk(handle, 4096))
        return original(state, handle)

    monkeypatch.setattr(checkpoint, "_write_state", full_at_the_end)
    with pytest.warns(
        UserWarning, match="final checkpoint not written: no space left .* The final model is complete"
    ):
        summary = trainer.fit()
    assert summary["final_dir"] and (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert [step for step, _ in list_checkpoints(tmp_path / "run")] == [2]


# ------------------------------------------------------------------------------- writable outputs


def test_ensure_writable_refuses_paths_that_cannot_be_written(tmp_path):
    afile = tmp_path / "a_file"
    afile.write_text("x")
    assert (
        ensure_writable(tmp_path / "new" / "deeper" / "grid.png") == tmp_path / "new" / "deeper" / "grid.png"
    )
    assert not (tmp_path / "new").exists()  # nothing created
    with pytest.raises(PermissionError, match="a_file is a file, not a folder"):
        ensure_writable(afile / "grid.png")
    with pytest.raises(PermissionError, match="is a folder"):
        ensure_writable(tmp_path)
    with pytest.raises(PermissionError, match="exists and is not a folder"):
        ensure_writable(afile, directory=True)
    with pytest.raises(PermissionError, match="not writable"):
        ensure_writable("/proc/zoo-cannot-write-here.png")
    assert not list(tmp_path.glob(".zoo-write-test-*"))


@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "dit_t.digits", "--n", "2", "--steps", "2", "--out", "{bad}"],
        ["sample", "dit_t.digits", "--n", "2", "--steps", "2", "--out", "", "--npz", "{bad}"],
        ["fid", "digits:test", "digits:train", "--json", "{bad}"],
        ["leaderboard", "--samples", "10", "--out", "{bad}"],
    ],
)
def test_commands_check_their_outputs_before_sampling(tmp_path, capsys, monkeypatch, argv):

    def never(*args, **kwargs):
        raise AssertionError("sampled or extracted before the output was checked")

    monkeypatch.setattr(zoo.eval.sampling, "sample_images", never)
    monkeypatch.setattr(zoo.eval.metrics, "extract", never)
    afile = tmp_path / "a_file"
    afile.write_text("x")
    bad = str(afile / "out")
    assert cli([part.replace("{bad}", bad) for part in argv]) == 2
    assert "a_file is a file, not a folder" in capsys.readouterr().err


# ------------------------------------------------------------------------ warm-ups and defaults


def test_ema_warmup_follows_timm_power_schedule_and_the_float64_recurrence():
    torch.manual_seed(0)
    online = torch.nn.Linear(3, 2)
    ema = EMA(online, decay=0.9999, warmup_power=2 / 3)
    expected = {k: v.detach().double().clone() for k, v in online.named_parameters()}
    for step in range(1, 30):
        with torch.no_grad():
            for param in online.parameters():
                param.add_(torch.randn_like(param))
        decay = 0.0 if step == 1 else min(0.9999, 1 - (1 + (step - 1)) ** (-2 / 3))
        assert ema.current_decay(step) == pytest.approx(decay)
        ema.update(online, step=step)
        for name, param in online.named_parameters():
            expected[name] = decay * expected[name] + (1 - decay) * param.detach().double()
            torch.testing.assert_close(
                dict(ema.module.named_parameters())[name].double(), expected[name], atol=1e-6, rtol=0
            )
    assert (
        ema.current_decay(2001) == pytest.approx(1 - 2001 ** (-2 / 3))
        and 0.993 < ema.current_decay(2001) < 0.995
    )
    assert ema.current_decay(10**9) == 0.9999  # capped at --ema
    constant = EMA(online, decay=0.9, warmup_power=0)
    assert constant.current_decay(1) == 0.0 and constant.current_decay(5) == 0.9


def test_lr_warmup_and_cosine_schedule():
    assert [lr_factor(s, 10, 4, "constant") for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cosine = [lr_factor(s, 10, 2, "cosine") for s in range(10)]
    assert cosine[:2] == [0.5, 1.0]
    assert (
        cosine[2] == 1.0
        and cosine[6] == pytest.approx(0.5)
        and cosine[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    )
    assert all(a >= b for a, b in zip(cosine[2:], cosine[3:]))
    assert default_warmup(2000) == 100 and default_warmup(10**6) == 1000 and default_warmup(8) == 0
    assert default_lr(1_274_888) == TINY_LR == 2e-3 and default_lr(33_000_000) == DIT_LR == 1e-4


def test_the_trainer_applies_the_schedule_to_every_group_and_records_the_defaults(tmp_path):
    config = tiny_config(tmp_path, steps=6, lr=None, warmup=3, lr_schedule="cosine", ckpt_every=0)
    trainer = Trainer(config)
    assert trainer.lr == TINY_LR  # the tiny model's default
    bases = list(trainer.base_lrs)
    assert len(bases) == 2  # the net and UW's log-variances
    seen = []
    x0, y = load_dataset("digits").images[:10], torch.arange(10)
    for step in range(6):
        trainer.step = step
        trainer.train_step(x0, y)
        seen.append([group["lr"] for group in trainer.optimizer.param_groups])
    for step, lrs in enumerate(seen):
        factor = lr_factor(step, 6, 3, "cosine")
        assert lrs == pytest.approx([base * factor for base in bases])
    fresh = Trainer(tiny_config(tmp_path, out=str(tmp_path / "defaults"), steps=2, lr=None))
    fresh.fit()
    card = (tmp_path / "defaults" / "final" / "README.md").read_text()
    recipe = json.loads(card.split("## Training\n\n```\n", 1)[1].split("```", 1)[0])
    assert recipe["lr"] == TINY_LR and recipe["warmup"] == 0 and recipe["lr_schedule"] == "constant"
    assert recipe["ema"] == 0.9 and recipe["ema_warmup_power"] == pytest.approx(2 / 3)
    assert recipe["ema_decay_at_end"] == pytest.approx(1 - 2 ** (-2 / 3), abs=1e-6)
    assert "default: 0.002" in recipe["lr_default"] and "5 % of the steps" in recipe["warmup_default"]


def test_no_progress_prints_a_line_every_log_every_steps(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli(
        ["train", "dit_t", *TINY_FLAGS, *SMALL_RUN, "--steps", "6", "--log-every", "2", "--out", str(out)]
    )
    assert rc == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["2/6", "4/6", "6/6"]
    assert all(
        re.search(r"loss \d+\.\d{4} \[.*\] lr [\d.e+-]+ grad_norm .* samples/s", line) for line in lines
    )
    logged = {r["step"]: r["loss"] for r in _log(out)}
    assert f"loss {logged[4]:.4f}" in lines[1]
