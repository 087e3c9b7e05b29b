"""The name grammar.

A model name composes four independently registered parts (ARCHITECTURE.md):

    {backbone}[_{routing}][_{mtl}][_k{K}[_{objective}]][.{tag}]

`dit_l_dtr_nash_k5` is DiT-L/2 + DTR routing + Nash-MTL over 5 timestep clusters (default
objective). Backbones (`zoo.models.register_backbone`, one decorator on a tiny entrypoint, as timm
does), routers, balancers, weightings and clustering objectives come from their own packages' registries,
so a new part is one file plus one decorator there and appears in the grammar automatically.
Named recipes (aliases for a full name plus fixed overrides) can be registered explicitly.

This module imports no part (and no torch): the names of a part come from its own registry once this process
has imported it (its run-time registrations count), and until then from the index of the built-in registries,
`registry_index.json` beside this file (written by `python -m zoo.hub.index`, which tests/test_registry_index.py
checks against the live registries). The index also holds what `zoo.describe` reports of each built-in
backbone and `name.tag`, so `zoo list` and `zoo info` answer without torch (`indexed_description`).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import itertools
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: default K when a balancer is named without `_k{K}` (ANT's default number of clusters)
DEFAULT_K = 5
#: the objective used by `_k{K}` without a suffix: uniform intervals, what ANT and DTR actually trained
DEFAULT_OBJECTIVE = "uniform"
#: routing aliases accepted in names (grammar token -> routing registry name)
ROUTING_ALIASES = {"rand": "random"}
#: the K values enumerated by list_models (any K parses)
LISTED_K = (5, 8)
#: the generated index of the built-in registries (module docstring; `python -m zoo.hub.index` rewrites it)
INDEX_FILE = Path(__file__).resolve().with_name("registry_index.json")
#: kind of name -> (the part's module, the function listing its registry): what the index stands in for
LIVE_REGISTRIES = {
    "backbones": ("zoo.models", "list_backbones"),
    "routers": ("zoo.routing", "list_routers"),
    "balancers": ("zoo.mtl", "list_balancers"),
    "weightings": ("zoo.mtl", "list_weightings"),
    "objectives": ("zoo.clustering", "list_objectives"),
}
#: the module whose import makes the weights registry (and `zoo.describe`) the one that answers
WEIGHTS_REGISTRY = "zoo.hub"

_RECIPES: dict[str, tuple[str, dict[str, Any]]] = {}


class UnknownModelError(KeyError, ValueError):
    """A model name that does not parse, or names a part that does not exist.

    Like every registry miss in the zoo (models, routing, mtl, clustering, pretrained weights) it is a
    KeyError (a look-up miss) and a ValueError (bad input), with a readable message.
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@functools.cache
def load_index() -> dict[str, Any]:
    """The index of the built-in registries (read once; `python -m zoo.hub.index` regenerates it)."""
    try:
        return json.loads(INDEX_FILE.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{INDEX_FILE} is missing (it ships with the package; `python -m zoo.hub.index` writes it)"
        ) from None


def registered(kind: str) -> list[str]:
    """The names of one kind (`LIVE_REGISTRIES`), sorted: the part's live registry once this process has
    imported the part, otherwise the index (no import: the part's torch stays unloaded)."""
    module, lister = LIVE_REGISTRIES[kind]
    live = getattr(sys.modules.get(module), lister, None)
    return sorted(live()) if live is not None else list(load_index()["names"][kind])


def register_recipe(name: str, target: str, **overrides: Any) -> None:
    """Register a named recipe: `name` builds `target` (a grammar name) with fixed overrides."""
    if name in _RECIPES:
        raise ValueError(f"recipe {name!r} is already registered")
    parse_name(target)  # fail early on a target that does not parse
    _RECIPES[name] = (target, dict(overrides))


def list_backbones() -> list[str]:
    return registered("backbones")


def routing_names() -> list[str]:
    names = set(registered("routers")) - {"none"}
    return sorted(names | {alias for alias, target in ROUTING_ALIASES.items() if target in names})


def balancer_names() -> list[str]:
    return registered("balancers")


def weighting_names() -> list[str]:
    return sorted(set(registered("weightings")) - {"none"})


def objective_names() -> list[str]:
    return registered("objectives")


def is_location(value: Any) -> bool:
    """A weights location, never a registry name: `local-dir:`, `hf-hub:`, a Path, or a string written as a
    path (absolute, `./x`, `../x`, `~/x`, or holding a `/`). A folder in the current directory named like a
    model (`./dit_t`) therefore never shadows the registry's `dit_t`."""
    if isinstance(value, Path):
        return True
    if not isinstance(value, str):
        return False
    return (
        value.startswith(("local-dir:", "hf-hub:", "~"))
        or value in (".", "..")
        or os.path.isabs(value)
        or "/" in value
        or os.sep in value
    )


@dataclass(frozen=True)
class ModelName:
    """A parsed model name."""

    backbone: str
    routing: str | None = None
    balancer: str | None = None
    weighting: str | None = None
    k: int | None = None
    objective: str | None = None
    tag: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def arch_name(self) -> str:
        """The name without its tag, in canonical order."""
        parts = [self.backbone]
        if self.routing:
            parts.append(self.routing)
        if self.balancer:
            parts.append(self.balancer)
        if self.weighting:
            parts.append(self.weighting)
        if self.k is not None:
            parts.append(f"k{self.k}")
            if self.objective and self.objective != DEFAULT_OBJECTIVE:
                parts.append(self.objective)
        return "_".join(parts)

    @property
    def full_name(self) -> str:
        return f"{self.arch_name}.{self.tag}" if self.tag else self.arch_name


def parse_name(name: str) -> ModelName:
    """Parse `{backbone}[_{routing}][_{mtl}][_k{K}[_{objective}]][.{tag}]`; raise with close matches."""
    if not isinstance(name, str) or not name:
        raise UnknownModelError(f"a model name must be a non-empty string, got {name!r}")
    base, _, tag = name.partition(".")
    if base in _RECIPES:
        target, overrides = _RECIPES[base]
        parsed = parse_name(target)
        return ModelName(**{**parsed.__dict__, "tag": tag or parsed.tag, "overrides": dict(overrides)})
    if tag and not re.fullmatch(r"[A-Za-z0-9_\-]+", tag):
        raise UnknownModelError(f"malformed tag {tag!r} in {name!r}: tags are letters, digits, '_' and '-'")
    tokens = base.split("_")
    # longest registered backbone prefix (so dit_s_p4 wins over dit_s)
    backbone = None
    backbones = set(list_backbones())
    for cut in range(len(tokens), 0, -1):
        if "_".join(tokens[:cut]) in backbones:
            backbone, rest = "_".join(tokens[:cut]), tokens[cut:]
            break
    if backbone is None:
        raise UnknownModelError(_unknown_message("model", name, _suggestion_pool(base)))
    routing = balancer = weighting = objective = None
    k = None
    pending = list(rest)
    if pending and pending[0] in routing_names():
        routing = pending.pop(0)
    while pending and (pending[0] in balancer_names() or pending[0] in weighting_names()):
        token = pending.pop(0)
        if token in balancer_names():
            if balancer is not None:
                raise UnknownModelError(
                    f"{name!r} names two MTL balancers ({balancer!r}, {token!r}); pick one"
                )
            balancer = token
        else:
            if weighting is not None:
                raise UnknownModelError(f"{name!r} names two weightings ({weighting!r}, {token!r}); pick one")
            weighting = token
    if pending and re.fullmatch(r"k[0-9]+", pending[0]):  # ASCII digits only (\d would take '５', '٥')
        digits = pending.pop(0)[1:]
        k = int(digits)
        if k < 1:
            raise UnknownModelError(f"{name!r}: the number of clusters must be >= 1, got k{digits}")
        if digits != str(k):
            raise UnknownModelError(f"{name!r}: write the number of clusters without leading zeros: k{k}")
        if pending and pending[0] in objective_names():
            objective = pending.pop(0)
    if pending:
        bad = pending[0]
        raise UnknownModelError(
            f"cannot parse {name!r}: unexpected part {bad!r} after {'_'.join(tokens[: len(tokens) - len(pending)])!r}. "
            f"Grammar: {{backbone}}[_{{routing}}][_{{mtl}}][_k{{K}}[_{{objective}}]][.{{tag}}]; routing: "
            f"{routing_names()}; mtl: {balancer_names() + weighting_names()}; objectives: {objective_names()}."
            + _close_matches_text(base)
        )
    if balancer is not None and k is None:
        k = DEFAULT_K
    if k is not None and objective is None:
        objective = DEFAULT_OBJECTIVE
    return ModelName(backbone, routing, balancer, weighting, k, objective, tag or None)


def list_models(pattern: str = "*") -> list[str]:
    """Names of the composable space matching an fnmatch pattern (`zoo.list_models(pretrained=True)`
    lists the `name.tag`s with weights)."""
    return sorted(n for n in _composable_names() if fnmatch.fnmatchcase(n, pattern))


def _composable_names() -> list[str]:
    routers = [None, *sorted(set(routing_names()) - set(ROUTING_ALIASES.values()))]
    balancers = balancer_names()
    mtls = [None, *balancers, *weighting_names()]
    objectives = [None, *sorted(set(objective_names()) - {DEFAULT_OBJECTIVE})]
    names = set(_RECIPES)
    for backbone, router, method in itertools.product(list_backbones(), routers, mtls):
        head = "_".join(p for p in (backbone, router, method) if p)
        if method in balancers:
            for k, objective in itertools.product(LISTED_K, objectives):
                names.add(f"{head}_k{k}" + (f"_{objective}" if objective else ""))
        else:
            names.add(head)
    return sorted(names)


def _suggestion_pool(base: str) -> list[str]:
    try:
        return _composable_names()
    except UnknownModelError:
        return list_backbones()


def _close_matches_text(base: str) -> str:
    matches = difflib.get_close_matches(base, _suggestion_pool(base), n=5, cutoff=0.5)
    return f" Did you mean: {', '.join(matches)}?" if matches else ""


def _unknown_message(kind: str, name: str, pool: list[str]) -> str:
    matches = difflib.get_close_matches(name.partition(".")[0], pool, n=5, cutoff=0.4)
    hint = f" Did you mean: {', '.join(matches)}?" if matches else ""
    return f"unknown {kind} {name!r}.{hint} (zoo.list_models() lists valid names)"


# ------------------------------------------------------------------ what the index answers without torch


def pretrained_matches(name: str, pattern: str) -> bool:
    """Whether `zoo.list_pretrained(pattern)` lists the `arch.tag` `name` (the pattern may match the arch)."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name.split(".")[0], pattern)


def indexed_pretrained(pattern: str = "*") -> list[str] | None:
    """`zoo.list_pretrained(pattern)` read from the index; None once this process has imported the weights
    registry (zoo.hub), which then answers (weights registered at run time count)."""
    if WEIGHTS_REGISTRY in sys.modules:
        return None
    return [name for name in load_index()["pretrained"] if pretrained_matches(name, pattern)]


def indexed_description(name: str) -> dict[str, Any] | None:
    """`zoo.describe(name)` read from the index, without torch; an unparsable name raises as there.

    None where `zoo.describe` must answer: once this process has imported the weights registry (zoo.hub), and
    for what the index does not hold: a weights folder, a recipe's overrides, a backbone or `name.tag` whose
    config does not build, an unknown tag, a (K, objective) the index has no intervals for (it holds K = 1 and
    the K that `list_models` enumerates, `LISTED_K`).
    """
    if WEIGHTS_REGISTRY in sys.modules or is_location(name):
        return None
    parsed = parse_name(name)
    index = load_index()
    if parsed.overrides:
        return None
    weights = index["weights"].get(parsed.arch_name, [])
    if parsed.tag:
        stored = index["pretrained"].get(parsed.full_name)
        if stored is None:
            return None
        return {**stored, "clusters": [tuple(c) for c in stored["clusters"]], "weights": weights}
    facts = index["backbones"].get(parsed.backbone)
    if facts is None:
        return None
    section = json.dumps(facts["diffusion"], sort_keys=True)
    objective = parsed.objective or DEFAULT_OBJECTIVE
    intervals = index["clusters"].get(section, {}).get(objective, {}).get(str(parsed.k or 1))
    if intervals is None:
        return None
    balancer = parsed.balancer or "linear"
    return {
        "name": parsed.full_name,
        "parts": {
            "backbone": parsed.backbone,
            "routing": parsed.routing or "none",
            "mtl": balancer,
            "weighting": parsed.weighting or "none",
            "clusters": parsed.k or 1,
            "objective": objective,
        },
        **facts,
        "clusters": [tuple(c) for c in intervals],
        "routing": {"name": ROUTING_ALIASES.get(parsed.routing, parsed.routing)} if parsed.routing else None,
        "mtl": {"name": balancer},
        "weights": weights,
    }
