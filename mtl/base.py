"""The balancer protocol: K cluster losses in, parameter gradients out.

Every balancer turns the cluster losses into one update ``sum_k c_k * grad L_k`` with coefficients
``c_k`` it chooses, writes it into ``.grad`` (accumulating, as ``loss.backward()`` does) and leaves
the optimiser step to the caller.

Conventions shared by every method:

* AMP: with ``scaler`` (a ``torch.amp.GradScaler``) the loss is scaled before every backward and
  ``.grad`` is written in the SCALED domain, exactly like ``scaler.scale(loss).backward()``; the
  caller then calls ``scaler.step(optimizer)`` (and ``scaler.unscale_`` first if it clips on its
  own). Quantities the balancer derives from gradients (Gram matrices, norms) are unscaled first.
* Multi-process: when ``torch.distributed`` is initialised with more than one process, the balancer
  averages the gradients it writes over the default group itself, so the network must NOT be
  wrapped in DistributedDataParallel (or its backward must run under ``no_sync()``). Each process
  must hold the same number of samples of every cluster (stratified timestep sampling does this);
  then the mean of the local cluster losses is the union-batch cluster loss and every method below
  computes the weights of the union batch.
* FSDP (``torch.distributed.fsdp.fully_shard``): parameters that are DTensors are FSDP's. Their
  gradients are averaged by FSDP's reduce-scatter, so the final backward is a plain
  ``backward()`` (it writes ``.grad`` of every parameter the loss reaches) and the balancer
  averages only the gradients of ordinary tensors (e.g. UW's log-variances). What the methods
  reduce besides gradients (cluster losses, per-layer cluster gradients of the Gram matrix) is
  still averaged by the balancer, so the weights stay those of the union batch.
* Clipping (``max_grad_norm``, part of a method's recipe): ``backward(..., clip=True)`` (the default)
  clips the total norm of the params' ``.grad`` after the balancer has written it (in the scaled domain
  the threshold is multiplied by the scale), i.e. per call. A caller that accumulates several
  backwards, or clips on its own, passes ``clip=False`` and clips the summed, unscaled gradient once
  with ``max_grad_norm`` (or a tighter threshold of its own): the zoo's trainer does this.
* Capture: ``capture(net, sample_cluster)`` returns the context manager to run the forward in; pass
  that same object to ``backward(..., capture=...)``, so several forwards can be in flight. Without
  it, the balancer uses the one its last ``capture`` opened (the single-forward protocol).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

try:
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:  # torch built without distributed support
    _DTensor = None


def world_size() -> int:
    """Number of processes of the default group (1 when torch.distributed is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_mean_(tensor: Tensor) -> Tensor:
    """Average ``tensor`` in place over all processes; the identity in a single process."""
    processes = world_size()
    if processes > 1:
        dist.all_reduce(tensor)
        tensor.div_(processes)
    return tensor


def is_sharded(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a DTensor, e.g. a parameter (or its gradient) sharded by FSDP's ``fully_shard``."""
    return _DTensor is not None and isinstance(tensor, _DTensor)


def grad_norm(params: Iterable[Tensor]) -> Tensor:
    """Total 2-norm of the params' ``.grad`` as an ordinary tensor, FSDP-sharded (DTensor) gradients included.

    Sharded norms are completed over their mesh, so every process gets the same value.
    """
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if is_sharded(g)]
    if not sharded:
        return torch.nn.utils.get_total_norm(grads)
    norms = [torch.nn.utils.get_total_norm(sharded).full_tensor()]
    plain = [g for g in grads if not is_sharded(g)]
    if plain:
        norms.append(torch.nn.utils.get_total_norm(plain).to(norms[0].device))
    return torch.linalg.vector_norm(torch.stack(norms))


def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` that also takes a mix of FSDP-sharded and ordinary parameters."""
    params = [p for p in params if p.grad is not None]
    if not any(is_sharded(p.grad) for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    norm = grad_norm(params)
    for group in ([p for p in params if is_sharded(p.grad)], [p for p in params if not is_sharded(p.grad)]):
        if group:  # foreach kernels take DTensors or tensors, not both
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, norm)
    return norm


def loss_scale(scaler: Any | None) -> float:
    """The GradScaler's current scale (1.0 without a scaler or when it is disabled)."""
    if scaler is None or not scaler.is_enabled():
        return 1.0
    return float(scaler.get_scale())


def scaled(loss: Tensor, scaler: Any | None) -> Tensor:
    """``scaler.scale(loss)`` when a scaler is in use, else ``loss``."""
    if scaler is None or not scaler.is_enabled():
        return loss
    return scaler.scale(loss)


def add_to_grads(params: list[Tensor], grads: Iterable[Tensor], owned: bool = False) -> None:
    """Accumulate ``grads`` into ``.grad`` like autograd does (assign when ``.grad`` is None).

    ``owned=True``: the caller hands over ``grads`` (fresh tensors nothing else holds), so a
    contiguous one is assigned as it is instead of copied.
    """
    for param, grad in zip(params, grads):
        grad = grad.reshape(param.shape).to(param.dtype)
        if param.grad is None:
            param.grad = grad if owned and grad.is_contiguous() else grad.clone()
        else:
            param.grad.add_(grad)


class Balancer(nn.Module):
    """Base class: turns cluster losses (K,) into ``.grad``; see the module docstring for AMP/DDP rules."""

    name: str = ""
    needs_after_step: bool = False

    def __init__(self, k: int, max_grad_norm: float | None = None) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int (the number of clusters), got {k!r}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be None or > 0, got {max_grad_norm!r}")
        self.k = k
        self.max_grad_norm = max_grad_norm

    # ---- protocol -------------------------------------------------------------------------------
    def capture(self, net: nn.Module, sample_cluster: Tensor) -> contextlib.AbstractContextManager:
        """Context around the forward pass; a no-op unless the method needs per-cluster gradients."""
        return contextlib.nullcontext()

    def backward(
        self,
        cluster_losses: Tensor,
        params: Iterable[Tensor],
        scaler: Any | None = None,
        capture: Any = None,
        clip: bool = True,
    ) -> dict:
        """Write the balanced update into ``params``' ``.grad``; returns what to log.

        ``capture``: what ``capture`` returned around this loss's forward (None: the last one opened);
        ``clip``: apply ``max_grad_norm`` to the gradient now (False: the caller clips once, later).
        """
        raise NotImplementedError

    def parameter_groups(self) -> list[dict]:
        """Extra optimiser parameter groups holding the balancer's learnable state (none by default)."""
        return []

    def neutral_start(self) -> None:
        """Reset the learned state so that the next update equals linear weighting (``mean_k L_k``).

        For a warm start from pretrained weights: the first step moves the network as plain training
        would, and the method's own state then adapts from there. Methods whose weights come from the
        current gradients alone (linear, and the Gram methods: their held weights start at 1/K and
        are recomputed from the pretrained model's gradients) have no learned state: a no-op.
        """

    def after_step(self, reevaluated_cluster_losses: Tensor) -> dict:
        """Called after the optimiser step by methods with ``needs_after_step``."""
        raise RuntimeError(f"balancer {self.name!r} has no after_step (needs_after_step is False)")

    def config(self) -> dict:
        """JSON-serialisable options; ``mtl.build(**balancer.config())`` rebuilds it."""
        return {"name": self.name, "k": self.k, **self._options()}

    def _options(self) -> dict:
        return {"max_grad_norm": self.max_grad_norm}

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.config().items() if key != "name")

    # ---- shared helpers -------------------------------------------------------------------------
    def _check_losses(self, cluster_losses: Tensor) -> None:
        if not isinstance(cluster_losses, Tensor) or cluster_losses.shape != (self.k,):
            shape = (
                tuple(cluster_losses.shape) if isinstance(cluster_losses, Tensor) else type(cluster_losses)
            )
            raise ValueError(f"cluster_losses must be a tensor of shape ({self.k},), got {shape}")

    @staticmethod
    def _check_params(params: Iterable[Tensor]) -> list[Tensor]:
        params = list(params)
        if not params:
            raise ValueError("params is empty: pass the parameters whose .grad the balancer should write")
        for param in params:
            if not param.requires_grad:
                raise ValueError("every parameter passed to backward must require grad")
        return params

    def _write_grads(self, loss: Tensor, params: list[Tensor], scaler: Any | None, clip: bool = True) -> dict:
        """Backward ``loss`` into ``params`` (scaled; averaged over processes), then clip if asked."""
        loss = scaled(loss, scaler)
        if any(is_sharded(param) for param in params):
            self._fsdp_backward(loss, params)
        elif world_size() == 1:
            torch.autograd.backward(loss, inputs=params)
        else:
            grads = torch.autograd.grad(loss, params, materialize_grads=True)
            flat = all_reduce_mean_(torch.cat([grad.reshape(-1) for grad in grads]))
            add_to_grads(params, flat.split([param.numel() for param in params]))
        return self._clip(params, scaler) if clip else {}

    @staticmethod
    def _fsdp_backward(loss: Tensor, params: list[Tensor]) -> None:
        """FSDP: one plain backward; FSDP averages the sharded params' gradients, the rest are averaged here.

        The ordinary tensors' earlier ``.grad`` (gradient accumulation) is set aside, so only this
        backward's share is averaged, then added back.
        """
        plain = [param for param in params if not is_sharded(param)]
        earlier = [param.grad for param in plain]
        for param in plain:
            param.grad = None
        torch.autograd.backward(loss)
        if not plain:
            return
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in plain]
        flat = all_reduce_mean_(torch.cat([grad.reshape(-1) for grad in grads]))
        for param, grad, old in zip(plain, flat.split([p.numel() for p in plain]), earlier):
            grad = grad.reshape(param.shape).to(param.dtype)
            param.grad = grad if old is None else old.add_(grad)

    def _clip(self, params: list[Tensor], scaler: Any | None) -> dict:
        if self.max_grad_norm is None:
            return {}
        scale = loss_scale(scaler)
        norm = clip_grad_norm(params, self.max_grad_norm * scale)
        return {"grad_norm_before_clip": (norm / scale).detach(), "grad_clip": self.max_grad_norm}
