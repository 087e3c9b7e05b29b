"""Timestep clustering for diffusion multi-task learning (ANT): exact interval clustering of the
denoising tasks, stratified timestep sampling, per-cluster losses and task-affinity measurement.

    clusters = clustering.interval_clustering(5, "snr", snr=diffusion.snr)
    t = clusters.sample_timesteps(batch_size, generator)
    cluster_losses = clusters.reduce(per_sample_losses, t)
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

__all__ = [
    "Objective",
    "TaskClusters",
    "get_objective",
    "interval_clustering",
    "list_objectives",
    "monotone_deviation_costs",
    "optimal_intervals",
    "register_objective",
]
