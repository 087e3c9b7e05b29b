"""What a leaderboard row records beyond its metrics, and the statistics over training seeds.

- `protocol_record`: every setting a number depends on that `zoo.eval.metrics.Protocol` does not hold
  (process, solver, NFE, eta, x0 clipping, label scheme, KID subsets and subset size, package version,
  git commit), merged into each row's protocol.
- `feature_named`: the leaderboard's metrics are computed on the shipped *classifier's* features, not
  Inception's, so its JSON names them so (`fid_classifier`, ...); `column` reads both the new names and
  the plain ones of JSON written before them.
- `seed_summary` and `comparisons`: mean ± std and t intervals over seeds (zoo.eval.stats), and each
  recipe against plain training with Welch and paired p-values and a claim worded at that strength.
"""

from __future__ import annotations

import functools
import math
import subprocess
from collections import defaultdict
from importlib import metadata
from pathlib import Path
from typing import Any

import zoo
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
LOWER_IS_BETTER = {"fid", "kid"}
#: the comparisons against plain training the leaderboard reports
COMPARED_METRICS = ("fid", "class_accuracy")
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


def protocol_record(settings: Any, model: Any, reference_size: int) -> dict[str, Any]:
    """The settings beside zoo.eval.metrics.Protocol's that a leaderboard number depends on."""
    solver = getattr(settings, "solver", None) or settings.sampler
    clip = getattr(settings, "clip_denoised", None)
    if clip is None:  # what model.sample does with clip_denoised=None
        clip = not (getattr(model, "config", None) or {}).get("vae")
    return {
        "process": getattr(getattr(model, "diffusion", None), "process", "unknown"),
        "solver": solver,
        "nfe": int(settings.steps),  # network calls per sample; guidance runs each on a doubled batch
        "guidance_doubles_batch": settings.cfg != 1.0,
        "eta": float(getattr(settings, "eta", 0.0)),
        "x0_clipping": bool(clip),
        "output_clamp": [-1.0, 1.0],
        "label_scheme": LABEL_SCHEME,
        "reference_size": int(reference_size),
        "kid_subsets": int(settings.kid_subsets),
        "kid_subset_size": min(KID_SUBSET_SIZE, int(reference_size), int(settings.samples)),
        **code_version(),
    }


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
    """Each recipe against plain training at the last step, per metric: summaries, p-values, the claim."""
    out = []
    for metric in metrics:
        values = final_values(curves, metric)
        plain = baseline or plain_recipe(sorted(values))
        if plain not in values:
            continue
        for recipe in sorted(values):
            if recipe == plain:
                continue
            result = stats.compare(
                recipe, values[recipe], plain, values[plain], feature_key(metric), metric in LOWER_IS_BETTER
            )
            out.append(result.to_dict())
    return out


def format_value(mean: float | None, std: float | None = None, digits: int = 4) -> str:
    """'m ± s', or 'm' alone when there is no spread (one seed; None or NaN from old JSON)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
