"""Timestep clustering for diffusion multi-task learning (ANT): exact interval clustering of the
denoising tasks, stratified timestep sampling, per-cluster losses and task-affinity measurement.

    clusters = clustering.interval_clustering(5, "snr", snr=diffusion.snr)
    t = clusters.sample_timesteps(batch_size, generator)
    cluster_losses = clusters.reduce(per_sample_losses, t)

Timestep samplers (`samplers.py`): `build_sampler(name, clusters, **options)` over `list_samplers()`
(`stratified`, the default, `uniform`, `lognorm`, `curriculum`), registered with `@register_sampler`.
"""

from .clusters import TaskClusters
from .intervals import interval_clustering, optimal_intervals
from .objectives import (
    Objective,
    get_objective,
    list_objectives,
    monotone_deviation_costs,
    register_objective,
)
from .samplers import (
    DEFAULT_SAMPLER,
    TimestepSampler,
    UnknownNameError,
    build_sampler,
    get_sampler,
    list_samplers,
    register_sampler,
)

__all__ = [
    "DEFAULT_SAMPLER",
    "Objective",
    "TaskClusters",
    "TimestepSampler",
    "UnknownNameError",
    "build_sampler",
    "get_objective",
    "get_sampler",
    "interval_clustering",
    "list_objectives",
    "list_samplers",
    "monotone_deviation_costs",
    "optimal_intervals",
    "register_objective",
    "register_sampler",
]
