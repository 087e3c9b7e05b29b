"""MTL: balancing the K timestep-cluster losses, and per-sample loss weightings.

``balancer = mtl.build(name, k, **options)``; ``with balancer.capture(net, sample_cluster): ...``;
``balancer.backward(cluster_losses, params, scaler=None)`` writes ``.grad``. See ``mtl.base`` for
the AMP and multi-process conventions shared by every method.
"""

from .base import Balancer
from .famo import FAMO
from .gram import GramBalancer, GramCapture, cluster_jacobian, cosine_matrix
from .imtl import IMTLG, imtl_weights
from .linear import Linear
from .nash import NashMTL, nash_weights
from .pcgrad import PCGrad, pcgrad, pcgrad_weights, random_orders
from .registry import (
    build,
    build_weighting,
    list_balancers,
    list_weightings,
    register_balancer,
    register_weighting,
)
from .uw import UncertaintyWeighting, uw_loss
from .weighting import P2, ContinuousUncertainty, MinSNR, Weighting

__all__ = [
    "FAMO",
    "IMTLG",
    "P2",
    "Balancer",
    "ContinuousUncertainty",
    "GramBalancer",
    "GramCapture",
    "Linear",
    "MinSNR",
    "NashMTL",
    "PCGrad",
    "UncertaintyWeighting",
    "Weighting",
    "build",
    "build_weighting",
    "cluster_jacobian",
    "cosine_matrix",
    "imtl_weights",
    "list_balancers",
    "list_weightings",
    "nash_weights",
    "pcgrad",
    "pcgrad_weights",
    "random_orders",
    "register_balancer",
    "register_weighting",
    "uw_loss",
]
