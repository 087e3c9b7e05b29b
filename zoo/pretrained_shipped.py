"""Weight configs of the models shipped inside the package (`<recipe>.digits`).

The facts (folder, sha256, training command, measured results with their protocol) are plain data in
`zoo/pretrained/shipped.json`, written by `scripts/train_shipped.py`, the one script that regenerates
every shipped file; this module only turns each entry into a registered PretrainedCfg.
"""

from __future__ import annotations

import json

from zoo.hub import PACKAGE_WEIGHTS, PretrainedCfg, register_pretrained

SHIPPED_MANIFEST = PACKAGE_WEIGHTS / "shipped.json"
DIGITS_OVERRIDES = {"input_size": 8, "in_channels": 1, "num_classes": 10}


def shipped_entries() -> dict[str, dict]:
    """The manifest: recipe -> {arch, tag, file, sha256, command, recipe, results, evaluation}."""
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
            description=f"{_entry['arch']} trained by this project on the built-in 8x8 digits (EMA weights, seed 0). "
            f"Command: {_entry['command']}",
            overrides=DIGITS_OVERRIDES,
            recipe=_entry["recipe"],
            evaluation=_entry.get("evaluation", {}),
            results={**_entry.get("results", {}), "measured_here": True} if _entry.get("results") else {},
        )
    )
