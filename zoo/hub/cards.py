"""Model-card facts that depend on registered weights: the lineage of finetuned weights (their base's
licence and Hub id) and the cards of the models shipped in the package. The card itself is zoo/card.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoo.card import OWN_LICENSE, derived_license
from zoo.hub.create import hub_folder, is_location
from zoo.hub.registry import get_pretrained_cfg
from zoo.hub.shipped import DATA_DESCRIPTIONS
from zoo.registry import UnknownModelError, parse_name


def _front_matter(path: Path) -> dict[str, Any]:
    """The YAML metadata of a README.md (empty when there is none)."""
    if not path.is_file():
        return {}
    from huggingface_hub import ModelCard

    return ModelCard(path.read_text()).data.to_dict()


def pretrained_lineage(model: str, pretrained: Any) -> dict[str, Any]:
    """Card facts of weights trained from `pretrained` (as `zoo train --pretrained` / `zoo.create` take it).

    Returns `license` (derived_license of the base), `base_model` (a Hub id or None) and `base_weights`
    (what the base was: name, licence, sha256, source). No weights are loaded; only configs and cards are read.
    """
    if pretrained in (None, False, ""):
        return {"license": OWN_LICENSE, "base_model": None, "base_weights": None}
    if isinstance(pretrained, dict):
        return {
            "license": "other",
            "license_name": "unknown-base-weights",
            "base_model": None,
            "base_weights": {"name": "an in-memory state dict", "license": "unknown"},
        }
    spec = str(pretrained)
    if spec.startswith("hf-hub:") or is_location(spec):
        if spec.startswith("hf-hub:"):
            repo = spec[len("hf-hub:") :].partition("@")[0]
            meta = _front_matter(hub_folder(repo) / "README.md")
            base_model = repo
        else:
            folder = Path(spec[len("local-dir:") :] if spec.startswith("local-dir:") else spec).expanduser()
            meta = _front_matter((folder if folder.is_dir() else folder.parent) / "README.md")
            base_model = meta.get("base_model")  # a local folder is no Hub id: keep its own base's
        license = meta.get("license")
        if license == "other":
            license = meta.get("license_name", "other")
        return {
            "license": derived_license(license or "unknown"),
            "base_model": base_model,
            "base_weights": {"name": spec, "license": license or "unknown (no card with a licence)"},
        }
    parsed = parse_name(model)
    key = spec if "." in spec else f"{parsed.arch_name}.{spec}"
    try:
        cfg = get_pretrained_cfg(key)
    except UnknownModelError:
        cfg = get_pretrained_cfg(f"{parsed.backbone}.{spec}" if "." not in spec else spec)
    return {
        "license": derived_license(cfg.license),
        "base_model": cfg.hf_hub_id,
        "base_weights": {
            "name": cfg.name,
            "license": cfg.license,
            "sha256": cfg.sha256,
            "source": cfg.hf_hub_id or cfg.url or cfg.file,
        },
    }


def shipped_card(name: str, entry: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The card facts of a shipped model from its manifest entry (zoo/pretrained/shipped.json)."""
    recipe, tag = name.split(".", 1)
    flag = "" if tag == "digits" else f" --data {tag}"
    data_note = (
        " The digits are scikit-learn's `load_digits` (UCI optdigits), which has no Hub dataset id."
        if tag == "digits"
        else ""
    )
    return {
        "name": name,
        "description": f"`{recipe}` trained from scratch by this project on {DATA_DESCRIPTIONS[tag]}: the EMA "
        f"weights of seed 0, trained by `scripts/train_shipped.py{flag}` (the command below) and measured "
        f"by `zoo leaderboard{flag}` under the protocol below.{data_note}",
        "license": OWN_LICENSE,
        "datasets": [tag],
        "command": entry["command"],
        "recipe": entry["recipe"],
        "results": entry.get("results"),
        "protocol": entry.get("evaluation"),
        "protocol_inception": entry.get("evaluation_inception"),
        "sha256": entry["sha256"],
        "load_name": name,
    }
