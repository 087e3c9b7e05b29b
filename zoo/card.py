"""Model cards: README.md with the Hub's YAML metadata and the facts of the weights.

The front matter carries the Hub's fields: `library_name`, `license` (+ `license_name` for "other"),
`tags`, `base_model` (a Hub model id, only when the weights were finetuned from weights that live on
the Hub), `datasets` (only real Hub dataset ids, see DATASET_HUB_IDS) and `model-index` (measured
results that carry an evaluation protocol). The body states the parts, the parameter count (all
parameters, the fixed sin-cos `pos_embed` included, as the DiT paper and the README's size table count
them; the trainable count beside it), the lineage of the weights and a "Use" snippet that returns these
weights.

Licences follow the weights (`derived_license`): weights trained from scratch by this project are
Apache-2.0 like its code; weights trained or finetuned from someone else's weights carry those
weights' licence (CC BY-NC 4.0 stays non-commercial).
"""

from __future__ import annotations

import json
from typing import Any

import torch

from zoo.config import arch_class
from zoo.diffusion import DEFAULT_PROCESS, solvers_for

#: the licence of weights this project trains from scratch (its code's licence)
OWN_LICENSE = "apache-2.0"
#: licence ids the Hub knows (a subset); anything else is written as `license: other` + `license_name`
HUB_LICENSES = {
    "apache-2.0",
    "mit",
    "bsd-3-clause",
    "cc-by-4.0",
    "cc-by-nc-4.0",
    "cc-by-sa-4.0",
    "cc-by-nc-sa-4.0",
    "openrail",
    "creativeml-openrail-m",
    "other",
}
#: data specs with a real Hub dataset id; others (the 8x8 digits, image folders) are named in the body only
DATASET_HUB_IDS = {"mnist": "ylecun/mnist", "in1k": "ILSVRC/imagenet-1k", "imagenet": "ILSVRC/imagenet-1k"}
#: result keys that are generation metrics (go into model-index); others (losses) stay in the table
METRICS = {
    "fid": "FID",
    "kid": "KID",
    "precision": "precision",
    "recall": "recall",
    "inception_score": "Inception score",
    "class_accuracy": "class accuracy",
    "fid_inception": "FID (Inception)",
    "kid_inception": "KID (Inception)",
}


def derived_license(base_license: str | None) -> str:
    """The licence of weights trained from `base_license` weights (None: trained from scratch here)."""
    if not base_license:
        return OWN_LICENSE
    return base_license


def parameter_counts(config: dict[str, Any]) -> dict[str, int]:
    """`total` (every parameter, the fixed pos_embed included), `trainable` and `fixed`, on the meta device."""
    with torch.device("meta"):
        net = arch_class(config["backbone"]["arch"])(**config["backbone"]["kwargs"])
    total = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "fixed": total - trainable}


def _license_fields(license: str) -> dict[str, str]:
    if license in HUB_LICENSES:
        return {"license": license}
    name = "".join(c if c.isalnum() else "-" for c in license.lower()).strip("-") or "unknown"
    return {"license": "other", "license_name": name}


def card_metadata(config: dict[str, Any], card: dict[str, Any]) -> dict[str, Any]:
    """The YAML front matter (a dict, in the order written) of a card."""
    from huggingface_hub import EvalResult, ModelCardData

    name = card.get("name") or config.get("name", "model")
    tags = ["diffusion", "dit-mtl-zoo", config["backbone"]["arch"]]
    if config.get("routing"):
        tags.append(f"routing-{config['routing']['name']}")
    if config.get("mtl", {}).get("name", "linear") != "linear":
        tags.append(f"mtl-{config['mtl']['name']}")
    tags += [t for t in card.get("tags", []) if t not in tags]
    datasets = sorted({DATASET_HUB_IDS[d] for d in card.get("datasets", []) if d in DATASET_HUB_IDS})
    eval_results = []
    results = card.get("results")
    protocol = card.get("protocol")
    if isinstance(results, dict) and protocol:  # only measured results with their protocol
        reference = str(protocol.get("reference", "test split"))
        data = reference.split(":")[0]
        for key, label in METRICS.items():
            if key.endswith("_inception") and not card.get("protocol_inception"):
                continue  # an Inception number is shown only with its own record
            if isinstance(results.get(key), (int, float)):
                eval_results.append(
                    EvalResult(
                        task_type="image-generation",
                        task_name="class-conditional image generation"
                        if config["backbone"]["kwargs"].get("num_classes", 0)
                        else "unconditional image generation",
                        dataset_type=DATASET_HUB_IDS.get(data, data),
                        dataset_name=reference,
                        dataset_split="test",
                        metric_type=key,
                        metric_value=results[key],
                        metric_name=label,
                        metric_config=_metric_config(key, protocol, card.get("protocol_inception")),
                        verified=False,
                    )
                )
    license = _license_fields(card.get("license", OWN_LICENSE))
    data = ModelCardData(
        library_name="dit-mtl-zoo",
        tags=tags,
        base_model=card.get("base_model") or None,
        datasets=datasets or None,
        model_name=name,
        eval_results=eval_results or None,
        **license,
    ).to_dict()
    order = ["library_name", "license", "license_name", "tags", "base_model", "datasets", "model-index"]
    return {k: data[k] for k in order if k in data}


def _metric_config(key: str, protocol: dict[str, Any], inception: dict[str, Any] | None) -> str:
    """How a card metric was measured: the sampling, the samples and the features (Inception's own record
    for the `*_inception` metrics: its reference images)."""
    sampling = (
        f"{protocol.get('sampler')}, {protocol.get('steps')} steps, guidance {protocol.get('guidance')}"
    )
    if key.endswith("_inception") and inception:
        return (
            f"{sampling}, {inception.get('num_samples')} samples vs {inception.get('reference')}, "
            f"{inception.get('extractor')} features"
        )
    return f"{sampling}, {protocol.get('num_samples')} samples, {protocol.get('extractor')} features"


def use_snippet(load_name: str, guidance: float = 1.0, sampler: str = "ddpm", steps: int = 250) -> str:
    """Python that returns these weights: locations load their own weights, registry names need pretrained=True.

    The sampling call uses the measured protocol's sampler, steps and guidance when the card has one.
    """
    if load_name.startswith(("local-dir:", "hf-hub:")):
        create = f"zoo.create({load_name!r})"
    else:
        create = f"zoo.create({load_name!r}, pretrained=True)"
    return "\n".join(
        [
            "import zoo",
            f"model = {create}",
            f"images = model.sample(labels=[0, 1, 2], steps={steps}, sampler={sampler!r}, guidance={guidance})",
        ]
    )


def render_card(config: dict[str, Any], card: dict[str, Any], num_parameters: int | None = None) -> str:
    """A model card from the model config and card facts.

    `card` keys: name, description, license, base_model, base_weights, datasets, tags, command, recipe,
    results, protocol, notes, sha256, load_name. `num_parameters` is ignored in favour of the count of
    the config's network (parameter_counts), kept for callers that pass it.
    """
    import yaml

    name = card.get("name") or config.get("name", "model")
    meta = card_metadata(config, card)
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {name}",
        "",
    ]
    if card.get("description"):
        lines += [card["description"], ""]
    license = card.get("license", OWN_LICENSE)
    base = card.get("base_weights")
    if base:
        lines += [
            f"Licence: **{license}**, the licence of the weights it was trained from "
            f"(`{base.get('name')}`, {base.get('license')}).",
            "",
        ]
    else:
        lines += [
            f"Licence: **{license}** (trained from scratch by this project, whose code is Apache-2.0).",
            "",
        ]
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
    try:
        counts = parameter_counts(config)
        lines.append(
            f"| parameters | {counts['total']:,} (all, the fixed sin-cos pos_embed's {counts['fixed']:,} "
            f"included; {counts['trainable']:,} trainable) |"
        )
    except Exception:  # a config this version cannot build: state what the weights file holds
        if num_parameters is not None:
            lines.append(f"| parameters | {num_parameters:,} (tensors in model.safetensors) |")
    if base:
        facts = ", ".join(f"{k} {v}" for k, v in base.items() if v and k != "name")
        lines.append(f"| base weights | `{base.get('name')}` ({facts}) |")
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
        ("Inception metrics", "protocol_inception"),
    ):
        if card.get(key):
            value = card[key]
            body = value if isinstance(value, str) else json.dumps(value, indent=2)
            lines += [f"## {section}", "", "```", body, "```", ""]
    if card.get("notes"):
        lines += ["## Notes", "", card["notes"], ""]
    protocol = card.get("protocol") or {}
    sampling = {k: protocol[k] for k in ("sampler", "steps", "guidance") if k in protocol}
    if "sampler" not in sampling:  # unmeasured: the default solver of the weights' own process
        sampling["sampler"] = solvers_for((config.get("diffusion") or {}).get("process", DEFAULT_PROCESS))[0]
    snippet = use_snippet(card.get("load_name", "local-dir:PATH"), **sampling)
    lines += ["## Use", "", "```python", snippet, "```", ""]
    return "\n".join(lines)
