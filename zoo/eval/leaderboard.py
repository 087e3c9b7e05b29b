"""`zoo leaderboard`: every matching shipped model evaluated under ONE protocol, with sample grids and
FID-against-training-step curves from the checkpoints of the training runs.

Metrics come from zoo.eval.metrics on the shipped classifier's features of the data set (digits or MNIST),
against that data set's test split. Every row records its protocol (zoo.eval.metrics.Protocol); rows without one are never shown.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import zoo.hub.shipped  # noqa: F401  (registers the shipped weight configs)
from zoo.card import render_card
from zoo.data import load_dataset
from zoo.data.images import ensure_writable, save_grid, save_npz
from zoo.diffusion import GRIDS
from zoo.eval import metrics as evaluate
from zoo.eval import record, stats
from zoo.eval.classifier import load_classifier
from zoo.eval.sampling import all_solvers, check_solver_options
from zoo.hub import PACKAGE_WEIGHTS, create, get_pretrained_cfg, list_pretrained
from zoo.hub.cards import shipped_card
from zoo.hub.shipped import SHIPPED_MANIFEST
from zoo.layout import sha256_of
from zoo.model import DiffusionModel

#: where `zoo leaderboard` writes by default: a folder in the directory it is run from (never the package)
DEFAULT_OUT = Path("leaderboard")
METRIC_COLUMNS = ("fid", "kid", "precision", "recall", "inception_score", "class_accuracy")
SUPPORTED_DATA = ("digits", "mnist")


@dataclass
class LeaderboardSettings:
    """One evaluation protocol (what `zoo leaderboard` flags set)."""

    data: str = "digits"
    models: str = "*"
    samples: int = 500
    steps: int = 25
    sampler: str = "ddim"  # the solver (`--solver`, alias `--sampler`)
    cfg: float = 1.0
    seed: int = 0
    batch: int = 500
    kid_subsets: int = 100
    grid: str | None = None  # the time grid of solvers that take one (dpm++2m: "uniform", "karras")

    def __post_init__(self) -> None:
        if self.data not in SUPPORTED_DATA:
            raise ValueError(f"no shipped extractor for data {self.data!r}; expected one of {SUPPORTED_DATA}")
        if self.samples < 10:
            raise ValueError(
                f"samples must be >= 10 (k-NN manifolds and covariances need several), got {self.samples}"
            )
        if self.steps < 1 or self.batch < 1:
            raise ValueError(f"steps and batch must be >= 1, got steps={self.steps}, batch={self.batch}")
        check_solver_options(self.sampler, self.steps, self.grid)

    @property
    def solver_options(self) -> dict[str, Any]:
        """The solver's own keywords for `model.sample` (none unless a grid is named)."""
        return {} if self.grid is None else {"grid": self.grid}


class Evaluator:
    """Holds the extractor and the reference features; evaluates models under one protocol."""

    def __init__(self, settings: LeaderboardSettings, npz_dir: Path | None = None) -> None:

        self.settings = settings
        self.npz_dir = npz_dir
        self.extractor = load_classifier(settings.data)
        reference = load_dataset(settings.data, split="test")
        self.reference_name = f"{settings.data}:test ({len(reference)} images)"
        self.reference = evaluate.extract(self.extractor, reference.images)

    def samples(self, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Class-balanced labels 0..C-1 repeated, and the samples drawn for them (fixed seed)."""
        images, labels, _ = self.draw(model)
        return images, labels

    def draw(self, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """`samples` and what they cost: {"solver", "solver_options", "nfe" (per image), "net_calls"}."""
        labels = torch.arange(self.settings.samples) % max(model.num_classes, 1)
        generator = torch.Generator().manual_seed(self.settings.seed)
        images, net_calls, evaluations = [], 0, 0
        for chunk in labels.split(self.settings.batch):
            chunk_images, info = model.sample(
                chunk,
                steps=self.settings.steps,
                sampler=self.settings.sampler,
                guidance=self.settings.cfg,
                generator=generator,
                return_info=True,
                **self.settings.solver_options,
            )
            images.append(chunk_images.clamp(-1, 1))
            net_calls += info["net_calls"]
            evaluations += info["nfe"] * len(chunk)
        nfe = evaluations / len(labels)
        cost = {
            "solver": self.settings.sampler,
            "solver_options": self.settings.solver_options,
            "nfe": int(nfe) if float(nfe).is_integer() else nfe,
            "net_calls": net_calls,
        }
        return torch.cat(images), labels, cost

    def evaluate(
        self,
        model: torch.nn.Module,
        name: str,
        weights_sha256: str,
        training_step: int | None = None,
        grid: Path | None = None,
    ) -> dict[str, Any]:
        """Sample, extract and compare: one leaderboard row with its protocol."""
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
        protocol = evaluate.Protocol(
            model=name,
            weights_sha256=weights_sha256,
            sampler=self.settings.sampler,
            steps=self.settings.steps,
            guidance=self.settings.cfg,
            num_samples=self.settings.samples,
            reference=self.reference_name,
            extractor=self.extractor.name,
            extractor_sha256=self.extractor.sha256,
            seed=self.settings.seed,
            training_step=training_step,
        )
        extra = record.protocol_record(self.settings, model, len(self.reference))
        # the solver, its options and the measured NFE per image (a guided step counts 2) win over derived ones
        return {"model": name, **metrics, "protocol": {**protocol.to_dict(), **extra, **cost}}


def shipped_names(data: str, pattern: str) -> list[str]:
    """`recipe.data` names of shipped weights whose name or recipe matches the fnmatch pattern."""

    names = [n for n in list_pretrained("*") if n.endswith(f".{data}")]
    return [
        n for n in names if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n.split(".")[0], pattern)
    ]


def evaluate_shipped(evaluator: Evaluator, names: list[str], grid_dir: Path | None) -> list[dict[str, Any]]:
    """One row per shipped model, loaded through the normal `pretrained=` path."""

    rows = []
    for name in names:
        model = create(name, pretrained=True).eval()
        grid = grid_dir / f"samples_{name}.png" if grid_dir is not None else None
        rows.append(evaluator.evaluate(model, name, get_pretrained_cfg(name).sha256, grid=grid))
        print(format_rows(rows[-1:], header=len(rows) == 1), flush=True)
    return rows


_CHECKPOINT = re.compile(r"step-(\d+)\.pt")


def evaluate_runs(evaluator: Evaluator, runs: Path, pattern: str) -> list[dict[str, Any]]:
    """Every checkpoint's EMA weights of runs laid out as RUNS/<recipe>/seed<S>/checkpoints/step-N.pt."""

    rows = []
    for checkpoint in sorted(runs.glob("*/seed*/checkpoints/step-*.pt")):
        recipe, seed = checkpoint.parents[2].name, int(checkpoint.parents[1].name[len("seed") :])
        if not fnmatch.fnmatchcase(recipe, pattern) or not (checkpoint.parents[1] / "final").is_dir():
            continue  # unfinished runs would compare unequal compute
        step = int(_CHECKPOINT.fullmatch(checkpoint.name).group(1))
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model = DiffusionModel(json.loads(state["model_config"]))
        model.net.load_state_dict(state["ema"])
        row = evaluator.evaluate(
            model.eval(), f"{recipe}@seed{seed}", sha256_of(checkpoint), training_step=step
        )
        rows.append({**row, "recipe": recipe, "seed": seed, "step": step})
        print(f"{recipe} seed {seed} step {step}: FID {row['fid']:.3f}", flush=True)
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
        for metric in METRIC_COLUMNS:
            values = [record.column(r, metric) for r in rows]
            values = [v for v in values if v is not None]
            if not values:
                continue
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
PER_ROW_PROTOCOL = ("model", "weights_sha256", "training_step")


def render_markdown(payload: dict[str, Any]) -> str:
    """The leaderboard page: the table of shipped models, the seed summary, the tests against plain
    training, and the protocol. Metric columns on the classifier's features are named so."""
    rows = [r for r in payload["results"] if evaluate.has_protocol(r)]
    lines = [f"# Leaderboard: {payload['settings']['data']}", ""]
    if rows:
        protocol = rows[0]["protocol"]
        lines += [
            "Protocol: " + ", ".join(f"{k}={v}" for k, v in protocol.items() if k not in PER_ROW_PROTOCOL),
            "",
        ]
    names = [record.feature_key(c) for c in METRIC_COLUMNS]
    lines += [
        "| model | " + " | ".join(names) + " | weights sha256 |",
        "|---" * (len(METRIC_COLUMNS) + 2) + "|",
    ]
    for row in sorted(rows, key=lambda r: record.column(r, "fid")):
        values = [record.column(row, c) for c in METRIC_COLUMNS]
        cells = " | ".join("" if v is None else f"{v:.4f}" for v in values)
        lines.append(f"| {row['model']} | {cells} | `{row['protocol']['weights_sha256'][:12]}` |")
    summary = summarize_seeds(payload["curves"]) if payload.get("curves") else payload.get("seed_summary")
    if summary:
        shown = ("fid", "kid", "precision", "recall", "class_accuracy")
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
        lines += [
            "",
            "## Against plain training (paired by seed; 'better' needs p < 0.05 and a difference > 1 std)",
            "",
            "| recipe | metric | difference of means | paired p | Welch p | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for test in tests:
            lines.append(
                f"| {test['recipe']} | {test['metric']} | {test['difference']:+.4f} | "
                f"{_p(test['paired_p'])} | {_p(test['welch_p'])} | {test['verdict']} |"
            )
    lines.append("")
    return "\n".join(lines)


def _p(p: float | None) -> str:
    return "" if p is None else f"{p:.3g}"


#: line colours (tab10 and two more) and markers: recipe i gets colour i and marker i, distinct up to 12
PLOT_COLOURS = (
    *("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"),
    *("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#000000", "#b8860b"),
)
PLOT_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p", "d")


def recipe_styles(recipes: list[str]) -> dict[str, tuple[str, str]]:
    """(colour, marker) per recipe, in sorted order: both differ between any two of the first 12."""
    return {
        recipe: (PLOT_COLOURS[i % len(PLOT_COLOURS)], PLOT_MARKERS[i % len(PLOT_MARKERS)])
        for i, recipe in enumerate(sorted(recipes))
    }


def plot_curves(curves: list[dict[str, Any]], path: Path | Any, data: str = "digits") -> Path | Any:
    """FID against training step, one line per recipe (mean over seeds, band = min..max).

    Each recipe has its own colour and marker (recipe_styles); `path` may also be a binary file object."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_recipe: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in curves:
        by_recipe[row["recipe"]][row["step"]].append(record.column(row, "fid"))
    styles = recipe_styles(list(by_recipe))
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for recipe, per_step in sorted(by_recipe.items()):
        steps = sorted(per_step)
        means = [statistics.fmean(per_step[s]) for s in steps]
        colour, marker = styles[recipe]
        axis.plot(steps, means, color=colour, marker=marker, markersize=5, label=recipe)
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
) -> dict[str, Any]:
    """Evaluate the shipped models (and, with `runs`, every training checkpoint); write JSON, MD and PNGs
    (and, with `page_writer`, e.g. zoo.eval.html.write_page, the self-contained web page)."""
    names = shipped_names(settings.data, settings.models) if names is None else names
    if not names:
        raise FileNotFoundError(
            f"no shipped model matches {settings.models!r} for {settings.data!r} "
            "(scripts/train_shipped.py trains them)"
        )
    out = Path(out)
    stem = f"leaderboard_{tag or settings.data}"
    evaluator = Evaluator(settings, npz_dir=npz_dir)
    payload: dict[str, Any] = {
        "settings": settings.__dict__,
        "results": [record.feature_named(r) for r in evaluate_shipped(evaluator, names, out)],
    }
    if runs is not None:
        curve_settings = LeaderboardSettings(**{**settings.__dict__, "samples": curve_samples, "models": "*"})
        curve_evaluator = Evaluator(curve_settings)
        curves = evaluate_runs(curve_evaluator, Path(runs), settings.models.split(".")[0])
        payload["curves"] = [record.feature_named(r) for r in curves]
        payload["seed_summary"] = summarize_seeds(payload["curves"])
        payload["comparisons"] = record.comparisons(payload["curves"])
        plot_curves(payload["curves"], out / f"{stem}_fid_vs_step.png", settings.data)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / f"{stem}.md").write_text(render_markdown(payload))
    if page_writer is not None:
        page_writer(payload, out / f"{stem}.html", assets=out)
    return payload


def write_cards(payload: dict[str, Any]) -> None:
    """Record each shipped model's measured results and protocol in the manifest and its card.

    A maintainer's step (`--write-cards`, run by scripts/train_shipped.py): it writes into the package.
    """

    manifest = json.loads(SHIPPED_MANIFEST.read_text())
    for row in payload["results"]:
        entry = manifest[row["model"]]
        values = {m: record.column(row, m) for m in METRIC_COLUMNS}
        entry["results"] = {m: round(v, 5) for m, v in values.items() if v is not None}
        entry["evaluation"] = row["protocol"]
    SHIPPED_MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")
    write_shipped_cards([row["model"] for row in payload["results"]])


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


def add_leaderboard_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of `zoo leaderboard`."""
    d = LeaderboardSettings()
    parser.add_argument("--data", default=d.data, choices=SUPPORTED_DATA)
    parser.add_argument(
        "--models", default=d.models, help="fnmatch pattern over recipe names, e.g. 'dit_t_dtr*'"
    )
    parser.add_argument("--samples", type=int, default=d.samples, help="generated samples per model")
    parser.add_argument("--steps", type=int, default=d.steps, help="solver steps (NFE = steps, x2 guided)")
    parser.add_argument(
        "--solver", "--sampler", dest="sampler", default=d.sampler, choices=all_solvers(), help="the solver"
    )
    parser.add_argument("--grid", default=None, choices=GRIDS, help="time grid of dpm++2m (default uniform)")
    parser.add_argument("--cfg", type=float, default=d.cfg, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--batch", type=int, default=d.batch)
    parser.add_argument(
        "--runs", default=None, help="training runs (RUNS/<recipe>/seed<S>/checkpoints) for curves"
    )
    parser.add_argument("--curve-samples", type=int, default=200, help="samples per checkpoint on the curves")
    parser.add_argument(
        "--out",
        default=str(DEFAULT_OUT),
        help="folder for the JSON, Markdown and PNGs (relative: to the current directory)",
    )
    parser.add_argument(
        "--npz", default=None, help="also save each model's samples as NPZ for the ADM evaluator"
    )
    parser.add_argument("--write-cards", action="store_true", help="record the results in the shipped cards")
    parser.add_argument(
        "--html", action="store_true", help="also write the self-contained web page (leaderboard_<data>.html)"
    )
    parser.add_argument(
        "--from-json",
        default=None,
        metavar="JSON",
        help="render the page (--html) from an existing leaderboard JSON and the PNGs beside it; samples nothing",
    )
    return parser


def main_from_args(args: argparse.Namespace, page_writer: Callable[..., Any] | None = None) -> int:
    """`zoo leaderboard` (the CLI passes zoo.eval.html.write_page as `page_writer` for --html)."""
    ensure_writable(args.out, directory=True)  # refused before any model is sampled
    if args.npz:
        ensure_writable(args.npz, directory=True)
    settings = LeaderboardSettings(
        data=args.data,
        models=args.models,
        samples=args.samples,
        steps=args.steps,
        sampler=args.sampler,
        cfg=args.cfg,
        seed=args.seed,
        batch=args.batch,
        grid=args.grid,
    )
    payload = run_leaderboard(
        settings,
        out=Path(args.out),
        runs=Path(args.runs) if args.runs else None,
        curve_samples=args.curve_samples,
        npz_dir=Path(args.npz) if args.npz else None,
        page_writer=page_writer,
    )
    if args.write_cards:
        write_cards(payload)
    print(render_markdown(payload))
    return 0
