"""Processes and solvers: what the net learns and how samples are drawn (registry.py: one decorator each).

`ddpm` (gaussian.py) is the discrete Gaussian diffusion DiT, DTR and ANT train with (eps prediction,
learned sigma) and its solvers `ddpm`, `ddim` and `dpm++2m` (dpm_solver.py: DPM-Solver++(2M), uniform or
Karras time grid); `flow` (flow.py) is SiT's linear-interpolant flow matching (velocity prediction,
continuous time mapped to the tasks) and its solvers `euler`, `heun`, `sde`.
"""

from zoo.diffusion.dpm_solver import GRIDS, dpm_solver_grid
from zoo.diffusion.flow import DEFAULT_FLOW_STEPS, SDE_LAST_STEP_SIZE, FlowMatching
from zoo.diffusion.gaussian import (
    FIXED_VARIANCES,
    NORMAL_CDFS,
    SCHEDULES,
    GaussianDiffusion,
    approx_standard_normal_cdf,
    classifier_free_guidance,
    discretized_gaussian_log_likelihood,
    named_beta_schedule,
    normal_kl,
    space_timesteps,
)
from zoo.diffusion.registry import (
    DEFAULT_PROCESS,
    UnknownNameError,
    build_process,
    get_solver,
    list_processes,
    process_class,
    register_process,
    register_solver,
    solvers_for,
)

__all__ = [
    "DEFAULT_FLOW_STEPS",
    "DEFAULT_PROCESS",
    "FIXED_VARIANCES",
    "GRIDS",
    "FlowMatching",
    "NORMAL_CDFS",
    "SCHEDULES",
    "SDE_LAST_STEP_SIZE",
    "GaussianDiffusion",
    "UnknownNameError",
    "approx_standard_normal_cdf",
    "build_process",
    "classifier_free_guidance",
    "discretized_gaussian_log_likelihood",
    "dpm_solver_grid",
    "get_solver",
    "list_processes",
    "named_beta_schedule",
    "normal_kl",
    "process_class",
    "register_process",
    "register_solver",
    "solvers_for",
    "space_timesteps",
]
