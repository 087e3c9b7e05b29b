"""Router registry: ``@register_router("name")`` on a Router subclass makes it buildable by name and config.

Adding a router kind (a timestep-gated mixture of experts, say) is one new module with one decorated
class, imported from ``routing/__init__.py``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .base import Router

NO_ROUTER = "none"
_ROUTERS: dict[str, type[Router]] = {}

RouterClass = TypeVar("RouterClass", bound=type[Router])


class UnknownNameError(KeyError, ValueError):
    """A name the router registry does not hold: a KeyError (a look-up miss) and a ValueError (bad input).

    The same pair as zoo.models.UnknownNameError (parts do not import each other, so each defines its own).
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def register_router(name: str) -> Callable[[RouterClass], RouterClass]:
    """Class decorator registering a Router subclass under ``name`` (also stored as ``cls.name``)."""
    if not isinstance(name, str) or not name.isidentifier() or name == NO_ROUTER:
        raise ValueError(f"router name must be a Python identifier other than {NO_ROUTER!r}, got {name!r}")

    def decorate(cls: RouterClass) -> RouterClass:
        if not (isinstance(cls, type) and issubclass(cls, Router)):
            raise TypeError(f"@register_router({name!r}) expects a routing.Router subclass, got {cls!r}")
        if name in _ROUTERS and _ROUTERS[name] is not cls:
            raise ValueError(f"router {name!r} is already registered as {_ROUTERS[name].__qualname__}")
        cls.name = name
        _ROUTERS[name] = cls
        return cls

    return decorate


def list_routers() -> list[str]:
    """Names accepted by :func:`build`, including ``"none"`` (no routing)."""
    return sorted([*_ROUTERS, NO_ROUTER])


def get_router_class(name: str) -> type[Router]:
    """The Router subclass registered as ``name``; unknown names list the closest valid ones."""
    if name not in _ROUTERS:
        close = difflib.get_close_matches(str(name), list_routers(), n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise UnknownNameError(f"unknown router {name!r}; expected one of {list_routers()}.{hint}")
    return _ROUTERS[name]


def build(
    name: str, channels: int | Sequence[int], num_blocks: int = 1, num_tasks: int = 1000, **options: Any
) -> Router | None:
    """Build a router by name: ``channels`` is one width for all blocks or a list of per-block widths.

    ``"none"`` returns ``None`` (the plain backbone). ``options`` are the kind's hyperparameters
    (``beta``, ``alpha``, ``variant`` for DTR; ``beta``, ``seed`` for random routing), plus ``strength``
    for every kind (``Router.set_strength``; only in the config of a router saved mid warm-up).
    """
    if name == NO_ROUTER:
        return None
    strength = options.pop("strength", 1.0)
    router = get_router_class(name)(channels, num_blocks=num_blocks, num_tasks=num_tasks, **options)
    router.set_strength(strength)
    return router
