"""Routing: which channels each denoising task (timestep) may use inside every block of a backbone.

``routing.build("dtr", channels=1024, num_blocks=24)`` gives a router whose ``mask(t, block)`` a
backbone multiplies into the input of block ``block``; ``"random"`` is random routing (``_rand`` in model names) and ``"none"``
builds no router. Tables are derived from config and never stored in checkpoints.
"""

from .base import Router, warmup_strength
from .dtr import DTRRouter
from .plot import plot_table
from .random import RandomRouter
from .registry import build, get_router_class, list_routers, register_router
from .tables import describe_table, dtr_table, random_table

__all__ = [
    "DTRRouter",
    "RandomRouter",
    "Router",
    "build",
    "describe_table",
    "dtr_table",
    "get_router_class",
    "list_routers",
    "plot_table",
    "random_table",
    "register_router",
    "warmup_strength",
]
