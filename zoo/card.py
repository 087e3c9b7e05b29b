"""Model cards: README.md with YAML front matter (library, licence, tags, datasets) and a results table."""

from __future__ import annotations

import json
from typing import Any


def _yaml_scalar(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def render_card(config: dict[str, Any], card: dict[str, Any], num_parameters: int | None = None) -> str:
    """A model card from the model config and card facts (license, datasets, command, results, protocol...)."""
    name = card.get("name") or config.get("name", "model")
    tags = ["diffusion", "dit-mtl-zoo", config["backbone"]["arch"]]
    if config.get("routing"):
        tags.append(f"routing-{config['routing']['name']}")
    if config.get("mtl", {}).get("name", "linear") != "linear":
        tags.append(f"mtl-{config['mtl']['name']}")
    lines = [
        "---",
        "library_name: dit-mtl-zoo",
        f"license: {_yaml_scalar(card.get('license', 'apache-2.0'))}",
        "tags:",
    ]
    lines += [f"- {tag}" for tag in tags + list(card.get("tags", []))]
    if card.get("datasets"):
        lines.append("datasets:")
        lines += [f"- {d}" for d in card["datasets"]]
    lines += ["---", "", f"# {name}", ""]
    if card.get("description"):
        lines += [card["description"], ""]
    clusters = config.get("clustering", {})
    lines += [
        "| part | setting |",
        "|---|---|",
        f"| backbone | `{config['backbone']['name']}` {json.dumps(config['backbone']['kwargs'])} |",
        f"| routing | {json.dumps(config.get('routing')) if config.get('routing') else 'none'} |",
        f"| clusters | K={clusters.get('k')} {clusters.get('objective', '')} {clusters.get('intervals', '')} |",
        f"| MTL | {json.dumps(config.get('mtl'))} |",
        f"| weighting | {json.dumps(config.get('weighting')) if config.get('weighting') else 'none'} |",
        f"| diffusion | {json.dumps(config.get('diffusion'))} |",
    ]
    if num_parameters is not None:
        lines.append(f"| parameters | {num_parameters:,} |")
    if card.get("sha256"):
        lines.append(f"| model.safetensors sha256 | `{card['sha256']}` |")
    lines.append("")
    results = card.get("results")
    if results:
        lines += ["## Results", ""]
        rows = results if isinstance(results, list) else [results]
        keys = sorted({k for row in rows for k in row})
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in rows]
        lines.append("")
    for section, key in (
        ("Training command", "command"),
        ("Training", "recipe"),
        ("Evaluation protocol", "protocol"),
    ):
        if card.get(key):
            value = card[key]
            body = value if isinstance(value, str) else json.dumps(value, indent=2)
            lines += [f"## {section}", "", "```", body, "```", ""]
    if card.get("notes"):
        lines += ["## Notes", "", card["notes"], ""]
    lines += [
        "## Use",
        "",
        "```python",
        "import zoo",
        f"model = zoo.create({card.get('load_name', 'local-dir:PATH')!r})",
        "images = model.sample(labels=[0, 1, 2], steps=250, guidance=1.5)",
        "```",
        "",
    ]
    return "\n".join(lines)
