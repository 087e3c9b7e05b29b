"""Name -> class registries for balancers and per-sample weightings.

Adding a method is one new file and one decorator: ``@register_balancer("nash")`` on the class.
``build(name, k, **options)`` and ``build_weighting(name, **options)`` are the only constructors the
rest of the project uses, so a saved ``config()`` always rebuilds the same object.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

_BALANCERS: dict[str, type[nn.Module]] = {}
_WEIGHTINGS: dict[str, type[nn.Module]] = {}

T = TypeVar("T", bound=type[nn.Module])


class UnknownNameError(KeyError, ValueError):
    """A name the balancer / weighting registry does not hold: a KeyError (a look-up miss) and a ValueError (bad input).

    The same pair as zoo.models.UnknownNameError (parts do not import each other, so each defines its own).
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _register(table: dict[str, type[nn.Module]], kind: str, name: str) -> Callable[[T], T]:
    def decorator(cls: T) -> T:
        if name in table and table[name] is not cls:
            raise ValueError(f"{kind} {name!r} is already registered to {table[name].__name__}")
        table[name] = cls
        cls.name = name
        return cls

    return decorator


def _lookup(table: dict[str, type[nn.Module]], kind: str, name: str) -> type[nn.Module]:
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise UnknownNameError(f"unknown {kind} {name!r}; valid names: {sorted(table)}.{hint}")
    return table[name]


def register_balancer(name: str) -> Callable[[T], T]:
    """Class decorator: make a balancer buildable as ``mtl.build(name, k, ...)``."""
    return _register(_BALANCERS, "balancer", name)


def register_weighting(name: str) -> Callable[[T], T]:
    """Class decorator: make a per-sample weighting buildable as ``mtl.build_weighting(name, ...)``."""
    return _register(_WEIGHTINGS, "weighting", name)


def list_balancers() -> list[str]:
    """Names accepted by :func:`build`, sorted."""
    return sorted(_BALANCERS)


def list_weightings() -> list[str]:
    """Names accepted by :func:`build_weighting` (``"none"`` included), sorted."""
    return sorted([*_WEIGHTINGS, "none"])


def build(name: str, k: int, **options: Any) -> nn.Module:
    """Build the balancer ``name`` for ``k`` cluster losses; unknown names list the valid ones."""
    return _lookup(_BALANCERS, "balancer", name)(k, **options)


def build_weighting(name: str, **options: Any) -> nn.Module | None:
    """Build a per-sample loss weighting; ``"none"`` returns None (no weighting)."""
    if name == "none":
        if options:
            raise ValueError(f"weighting 'none' takes no options, got {sorted(options)}")
        return None
    return _lookup(_WEIGHTINGS, "weighting", name)(**options)
