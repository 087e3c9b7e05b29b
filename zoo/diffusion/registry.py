"""The process and solver slots: which generative process a net learns, and how samples are drawn.

A process is a class registered with `@register_process(name)`; it is built from the `diffusion` section of
a model's config (`build_process(section)`; `section["process"]`, default "ddpm") and offers what the model
uses: `num_timesteps` (the number of denoising tasks: routing tables and clusters are indexed by task,
task 0 = least noise), `snr` (float64, per task: the clustering objectives read it), `prediction` (what
the net predicts: "eps", "velocity"), `training_losses(net, x0, t, y, noise=...)` (per-sample losses)
and `sample(net, shape, y=..., solver=..., steps=..., ...)`.

A solver is a function registered with `@register_solver(name, process=...)`, called by its process's
`sample`; `solvers_for(process)` lists those that fit. Adding either is one file and one decorator.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

_PROCESSES: dict[str, type] = {}
_SOLVERS: dict[str, dict[str, Callable[..., Any]]] = {}

#: the process of a config without a `process` field (every config written before the slot)
DEFAULT_PROCESS = "ddpm"


class UnknownNameError(KeyError, ValueError):
    """A process or solver name the registry does not hold (a KeyError and a ValueError)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _miss(kind: str, name: Any, pool: list[str], extra: str = "") -> UnknownNameError:
    close = difflib.get_close_matches(str(name), pool, n=3, cutoff=0.4)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return UnknownNameError(f"unknown {kind} {name!r}{extra}; expected one of {pool}.{hint}")


def register_process(name: str) -> Callable[[type], type]:
    """Register a process class (built with `cls.from_config(section)`) under `name`."""

    def decorator(cls: type) -> type:
        if name in _PROCESSES and _PROCESSES[name] is not cls:
            raise ValueError(f"process {name!r} is already registered to {_PROCESSES[name].__qualname__}")
        if not callable(getattr(cls, "from_config", None)):
            raise TypeError(f"process {cls.__qualname__} must define from_config(section)")
        cls.process = name
        _PROCESSES[name] = cls
        _SOLVERS.setdefault(name, {})
        return cls

    return decorator


def register_solver(name: str, process: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a sampling loop `fn(process, net, shape, **options) -> samples` for `process`."""

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        table = _SOLVERS.setdefault(process, {})
        if name in table and table[name] is not fn:
            raise ValueError(f"solver {name!r} is already registered for process {process!r}")
        table[name] = fn
        return fn

    return decorator


def list_processes() -> list[str]:
    return sorted(_PROCESSES)


def solvers_for(process: str) -> list[str]:
    """The solvers that fit `process`, in registration order (the first is its default)."""
    if process not in _PROCESSES:
        raise _miss("process", process, list_processes())
    return list(_SOLVERS.get(process, {}))


def get_solver(process: str, name: str) -> Callable[..., Any]:
    table = _SOLVERS.get(process, {})
    if name not in table:
        others = sorted(p for p, solvers in _SOLVERS.items() if name in solvers)
        extra = f" for the {process!r} process" + (f" (it is a solver of {others})" if others else "")
        raise _miss("solver (sampler)", name, solvers_for(process), extra)
    return table[name]


def process_class(name: str) -> type:
    if name not in _PROCESSES:
        raise _miss("process", name, list_processes())
    return _PROCESSES[name]


def build_process(section: dict[str, Any]) -> Any:
    """The process of a config's `diffusion` section."""
    return process_class(section.get("process", DEFAULT_PROCESS)).from_config(section)
