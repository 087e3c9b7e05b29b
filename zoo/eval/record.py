"""What a leaderboard row records beyond its metrics, and the statistics over training seeds.

- `protocol_record`: every setting a number depends on that `zoo.eval.metrics.Protocol` does not hold
  (process, solver, NFE, eta, x0 clipping, label scheme, KID subsets and subset size, package version,
  git commit), merged into each row's protocol.
- `feature_named`: the leaderboard's metrics are computed on the shipped *classifier's* features, not
  Inception's, so its JSON names them so (`fid_classifier`, ...); `column` reads both the new names and
  the plain ones of JSON written before them.
- `seed_summary` and `comparisons`: mean ± std and t intervals over seeds (zoo.eval.stats), and each
  recipe against the plain training of ITS process (`sit_t_*` against `sit_t`, `dit_t_*` against `dit_t`)
  with Welch and paired p-values and a claim worded at that strength.
- `row_process`, `legacy_protocol`, `protocol_differences`, `shared_protocol`: the process of a row (also
  of rows written before `process` was recorded), and what `zoo leaderboard --merge` and the pages compare.
"""

from __future__ import annotations

import functools
import math
import re
import subprocess
from collections import defaultdict
from importlib import metadata
from pathlib import Path
from typing import Any

import zoo
from zoo.diffusion import list_processes, solvers_for
from zoo.eval import stats
from zoo.eval.metrics import KID_SUBSET_SIZE

#: metric -> its name in leaderboard JSON written since the classifier features were named (issue 19)
CLASSIFIER_NAMES = {
    "fid": "fid_classifier",
    "kid": "kid_classifier",
    "kid_std": "kid_classifier_std",
    "precision": "precision_classifier",
    "recall": "recall_classifier",
    "inception_score": "inception_score_classifier",
}
#: how Evaluator.samples assigns labels (zoo/eval/leaderboard.py)
LABEL_SCHEME = "class-balanced: sample i is drawn for label i mod C (C = the model's classes)"
#: metrics that are better when lower (the rest are better when higher)
LOWER_IS_BETTER = {"fid", "kid", "fid_inception", "kid_inception"}
#: the comparisons against plain training the leaderboard reports (fid_inception where the curves carry
#: it: `zoo leaderboard --inception N`, at each run's last checkpoint)
COMPARED_METRICS = ("fid", "class_accuracy", "fid_inception")
#: protocol keys that differ per row by construction (never part of "the same protocol")
PER_ROW_PROTOCOL = ("model", "weights_sha256", "training_step")
#: where the code came from: provenance kept per row, not a setting (a merged leaderboard holds rows of
#: several commits; each keeps its own)
PROVENANCE = ("package_version", "git_commit", "git_dirty")
#: measured per row (nfe, net_calls) or set by the model's config (x0_clipping: pixel models clip, latent
#: models do not): they follow from the settings and the model, so they are compared only with a row this
#: run measured (zoo.eval.leaderboard.merge_payload)
PER_MODEL_PROTOCOL = ("nfe", "net_calls", "x0_clipping")
_PACKAGE = "dit-mtl-zoo"
_ROOT = Path(__file__).resolve().parents[2]  # the checkout (or site-packages when installed)


def feature_key(metric: str) -> str:
    """The JSON key of a metric in new leaderboard output (classifier-feature metrics renamed)."""
    return CLASSIFIER_NAMES.get(metric, metric)


def column(row: dict[str, Any], metric: str) -> float | None:
    """A metric of a row under its new key or, for JSON written before the renaming, its plain key."""
    for key in (feature_key(metric), metric):
        value = row.get(key)
        if value is not None:
            return value
    return None


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, str]:
    """The package version and the git commit of the checkout the code runs from ("unknown" if none)."""
    try:
        version = metadata.version(_PACKAGE)
    except metadata.PackageNotFoundError:
        version = zoo.__version__
    commit, dirty = "unknown", None
    try:
        top = subprocess.run(
            ["git", "-C", str(_ROOT), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split()
        if len(top) == 2 and Path(top[0]).resolve() == _ROOT:  # this project's checkout, not a parent's
            commit = top[1]
            status = subprocess.run(
                ["git", "-C", str(_ROOT), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
            dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    out = {"package_version": str(version), "git_commit": commit}
    if dirty is not None:
        out["git_dirty"] = dirty
    return out


def solver_process(solver: str) -> str:
    """The one process a solver belongs to (every solver name is registered for exactly one)."""
    owners = [process for process in list_processes() if solver in solvers_for(process)]
    if len(owners) != 1:
        raise ValueError(
            f"solver {solver!r} belongs to {owners or 'no process'}; a leaderboard solver names one process "
            f"(the solvers: {{{', '.join(f'{p}: {solvers_for(p)}' for p in list_processes())}}})"
        )
    return owners[0]


def row_process(row: dict[str, Any]) -> str:
    """The process of a row: its recorded `process`, else (JSON written before it) the process of its
    solver (`solver`, or the older `sampler`), else "unknown"."""
    protocol = row.get("protocol") or {}
    if protocol.get("process") not in (None, "", "unknown"):
        return str(protocol["process"])
    solver = protocol.get("solver") or protocol.get("sampler")
    try:
        return solver_process(str(solver)) if solver else "unknown"
    except ValueError:
        return "unknown"


def settings_record(settings: Any, process: str, reference_size: int) -> dict[str, Any]:
    """The part of `protocol_record` that follows from the settings alone (no model): what every row of
    `process` evaluated under `settings` records. `settings.choice(process)` (zoo.eval.leaderboard) gives
    the process's solver and steps; plain settings objects with `solver`/`sampler` and `steps` work too."""
    choose = getattr(settings, "choice", None)
    if choose is not None:
        choice = choose(process)
        solver, steps = choice.solver, choice.steps
    else:
        solver, steps = getattr(settings, "solver", None) or settings.sampler, settings.steps
    return {
        "process": process,
        "solver": solver,
        "nfe": int(steps),  # a placeholder: the leaderboard records the measured NFE per image over it
        "guidance_doubles_batch": settings.cfg != 1.0,
        "eta": float(getattr(settings, "eta", 0.0)),
        "output_clamp": [-1.0, 1.0],
        "label_scheme": LABEL_SCHEME,
        "reference_size": int(reference_size),
        "kid_subsets": int(settings.kid_subsets),
        "kid_subset_size": min(KID_SUBSET_SIZE, int(reference_size), int(settings.samples)),
    }


def protocol_record(settings: Any, model: Any, reference_size: int) -> dict[str, Any]:
    """The settings beside zoo.eval.metrics.Protocol's that a leaderboard number depends on."""
    clip = getattr(settings, "clip_denoised", None)
    if clip is None:  # what model.sample does with clip_denoised=None
        clip = not (getattr(model, "config", None) or {}).get("vae")
    process = getattr(getattr(model, "diffusion", None), "process", "unknown")
    record = settings_record(settings, process, reference_size)
    return {**record, "x0_clipping": bool(clip), **code_version()}


def legacy_protocol(protocol: dict[str, Any], settings: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A row's protocol with the fields that JSON written before the full record lacks, where they follow
    from what it did record; and the names of those derived fields.

    process: that of its solver; solver: its `sampler`; reference_size: from the reference's name;
    kid_subsets: the JSON's settings; kid_subset_size: min(1000, reference, samples) as
    zoo.eval.metrics.kid draws; guidance_doubles_batch: guidance != 1; solver_options: the settings' grid.
    """
    out, derived = dict(protocol), []

    def fill(key: str, value: Any) -> None:
        if key not in out and value is not None:
            out[key] = value
            derived.append(key)

    solver = out.get("solver") or out.get("sampler")
    fill("solver", out.get("sampler"))
    if solver and "process" not in out:
        try:
            fill("process", solver_process(str(solver)))
        except ValueError:
            pass
    match = re.search(r"\((\d+) images\)", str(out.get("reference", "")))
    size = int(match.group(1)) if match else None
    fill("reference_size", size)
    fill("kid_subsets", settings.get("kid_subsets"))
    if size is not None and "num_samples" in out:
        fill("kid_subset_size", min(KID_SUBSET_SIZE, size, int(out["num_samples"])))
    if "guidance" in out:
        fill("guidance_doubles_batch", out["guidance"] != 1.0)
    if "grid" in settings or "sampler" in settings:  # settings written before solver_options
        fill("solver_options", {} if settings.get("grid") is None else {"grid": settings["grid"]})
    return out, derived


def protocol_differences(
    protocol: dict[str, Any], expected: dict[str, Any], ignore: tuple[str, ...] = ()
) -> tuple[list[str], list[str]]:
    """(differences, unrecorded) of a row's protocol against an expected one, over every key but the
    per-row ones, the provenance and `ignore`: "key: row value != expected value" for each key both hold
    with unequal values (or the row holds and `expected` lacks), and the keys only `expected` holds."""
    skipped = set(PER_ROW_PROTOCOL) | set(PROVENANCE) | set(ignore)
    differences, unrecorded = [], []
    for key in sorted((set(protocol) | set(expected)) - skipped):
        if key not in protocol:
            unrecorded.append(key)
        elif key not in expected:
            differences.append(f"{key}: {protocol[key]!r} is not a field of this run's protocol")
        elif not _same(protocol[key], expected[key]):
            differences.append(f"{key}: {protocol[key]!r} != {expected[key]!r}")
    return differences, unrecorded


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def shared_protocol(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The protocol the rows share (keys with one value in every row, per-row keys left out) and the
    keys whose values differ between rows or that only some rows record (e.g. git_commit after a merge)."""
    protocols = [r.get("protocol") or {} for r in rows]
    keys = list(dict.fromkeys(k for p in protocols for k in p if k not in PER_ROW_PROTOCOL))
    shared, varying = {}, []
    for key in keys:
        values = [p[key] for p in protocols if key in p]
        if len(values) == len(protocols) and all(_same(v, values[0]) for v in values):
            shared[key] = values[0]
        else:
            varying.append(key)
    return shared, varying


def kid_std_is_meaningful(protocol: dict[str, Any]) -> bool:
    """False when every KID subset is the whole of both sets (all subsets equal: a std of 0 by construction)."""
    size, reference = protocol.get("kid_subset_size"), protocol.get("reference_size")
    if size is None or reference is None:
        return True  # an old record: cannot tell
    return not (size >= reference and size >= protocol.get("num_samples", math.inf))


def feature_named(row: dict[str, Any]) -> dict[str, Any]:
    """A row of new leaderboard output: classifier-feature metrics renamed, a meaningless KID std dropped."""
    out = {CLASSIFIER_NAMES.get(key, key): value for key, value in row.items()}
    if not kid_std_is_meaningful(row.get("protocol", {})):
        out.pop(CLASSIFIER_NAMES["kid_std"], None)
    return out


def final_values(curves: list[dict[str, Any]], metric: str) -> dict[str, dict[int, float]]:
    """recipe -> {seed: the metric at that recipe's last training step}."""
    last: dict[str, int] = {}
    for row in curves:
        last[row["recipe"]] = max(last.get(row["recipe"], 0), row["step"])
    values: dict[str, dict[int, float]] = defaultdict(dict)
    for row in curves:
        value = column(row, metric)
        if row["step"] == last[row["recipe"]] and value is not None:
            values[row["recipe"]][int(row["seed"])] = float(value)
    return dict(values)


def plain_recipe(recipes: list[str]) -> str | None:
    """The plain-training recipe: the one whose name prefixes (name + "_") the most others."""
    if not recipes:
        return None
    return max(sorted(recipes), key=lambda r: (sum(o.startswith(r + "_") for o in recipes), -len(r)))


def comparisons(
    curves: list[dict[str, Any]], baseline: str | None = None, metrics: tuple[str, ...] = COMPARED_METRICS
) -> list[dict[str, Any]]:
    """Each recipe against plain training at the last step, per metric: summaries, p-values, the claim.

    Recipes are compared within their process only (`row_process`): the plain recipe of each process is
    found among that process's recipes (`sit_t` for `sit_t_*`, `dit_t` for `dit_t_*`); `baseline` names it
    for the process it belongs to (the others keep theirs). Each entry records its `process`."""
    by_process: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in curves:
        by_process[row_process(row)].append(row)
    out = []
    for metric in metrics:
        for process, rows in sorted(by_process.items()):
            values = final_values(rows, metric)
            plain = baseline if baseline in values else plain_recipe(sorted(values))
            if plain not in values:
                continue
            for recipe in sorted(values):
                if recipe == plain:
                    continue
                result = stats.compare(
                    recipe,
                    values[recipe],
                    plain,
                    values[plain],
                    feature_key(metric),
                    metric in LOWER_IS_BETTER,
                )
                out.append({**result.to_dict(), "process": process})
    return out


def baselines(comparisons_: list[dict[str, Any]]) -> dict[str, str]:
    """process -> its plain recipe, as the comparisons used them."""
    return {c.get("process", "unknown"): c["baseline"] for c in comparisons_}


def format_value(mean: float | None, std: float | None = None, digits: int = 4) -> str:
    """'m ± s', or 'm' alone when there is no spread (one seed; None or NaN from old JSON)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
