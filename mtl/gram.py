"""Per-cluster gradient Gram matrices without K backward passes, and the Gram-driven balancer base.

Every cluster loss is a mean over its own samples and the network mixes no samples (no batch norm),
so one backward of ``sum_k L_k`` hands each layer, at its output, exactly the per-sample output
gradient of that sample's own cluster loss. :class:`GramCapture` hooks the parameterised modules of
the network, and on that one backward computes each layer's K cluster weight-gradients from its
saved input and its output gradient (``nn.Linear``: ``G_k^T A_k``; ``nn.Conv2d``:
``conv2d_weight``; ``nn.Embedding``: ``index_add``; any other module: a local autograd VJP per
cluster through that module only), adds their K x K inner products to the Gram matrix and drops
them. Parameter gradients are not computed on that pass. Cost: one forward (shared with the loss)
plus about one backward (input gradients + K cluster weight-gradients); extra memory: the K
gradients of the largest layer. :func:`cluster_jacobian` is the slow exact reference (K backwards,
K x P memory).

Under FSDP (``fully_shard``) the hooks see the full, all-gathered weights during compute and the
layers' activations are local, so the K cluster weight-gradients of a layer are this process's
share; they are averaged over processes before their products, as without FSDP. The FSDP
parameters swap between sharded DTensors and unsharded tensors, so they are matched by their slot
in the module (not by identity), and the params passed must then be all the net's trainable ones.

Under ``torch.compile`` the hooks cannot see the module outputs inside compiled regions (their backward
is one fused node), so a capture around a compiled network runs that forward eagerly
(``torch.compiler.set_stance("force_eager")``, warned once); steps without a capture stay compiled.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .base import Balancer, add_to_grads, all_reduce_mean_, is_sharded, loss_scale, scaled


def cluster_jacobian(cluster_losses: Tensor, params: list[Tensor]) -> Tensor:
    """Reference path: the (K, P) matrix of cluster gradients by K autograd backwards (graph kept)."""
    rows = []
    for loss in cluster_losses:
        grads = torch.autograd.grad(loss, params, retain_graph=True, materialize_grads=True)
        rows.append(torch.cat([grad.reshape(-1) for grad in grads]))
    return torch.stack(rows)


def cosine_matrix(gram: Tensor) -> Tensor:
    """Cosine similarities of the cluster gradients from their Gram matrix (0 for zero gradients)."""
    norms = gram.diagonal().clamp_min(0).sqrt()
    denominator = torch.outer(norms, norms)
    return torch.where(denominator > 0, gram / denominator.clamp_min(1e-300), torch.zeros_like(gram))


def _is_compiled(net: nn.Module) -> bool:
    """Whether ``net`` or one of its modules runs through ``torch.compile`` (``.compile()`` or a wrapper)."""
    return any(
        getattr(module, "_compiled_call_impl", None) is not None or hasattr(module, "_orig_mod")
        for module in net.modules()
    )


_COMPILED_WARNED = False


def _warn_compiled_once() -> None:
    global _COMPILED_WARNED
    if not _COMPILED_WARNED:
        _COMPILED_WARNED = True
        warnings.warn(
            "GramCapture: the network is torch.compile'd, and the Gram hooks need the eager module outputs; "
            "the forwards of Gram update steps run eagerly (the other steps stay compiled)",
            UserWarning,
            stacklevel=3,
        )


def _direct_params(module: nn.Module) -> list[Tensor]:
    return [p for p in module._parameters.values() if p is not None and p.requires_grad]


@dataclass
class _Call:
    module: nn.Module
    inputs: tuple
    output: Tensor
    root: bool
    params: dict[str, Tensor]  # the module's parameters as the forward used them (FSDP: unsharded)
    done: bool = False


@dataclass
class _Pending:
    calls_left: int
    grads: Tensor | None = None


@dataclass
class GramCapture:
    """Records one forward of ``net`` so that :meth:`gram` gives the K x K cluster-gradient Gram matrix.

    ``sample_cluster`` (B,) is each sample's cluster. Use as a context manager around the forward.
    """

    net: nn.Module
    sample_cluster: Tensor
    k: int
    _calls: list[_Call] = field(default_factory=list)
    _handles: list[Any] = field(default_factory=list)
    _local: bool = False
    _stance: Any = None

    def __post_init__(self) -> None:
        cluster = self.sample_cluster
        if cluster.dim() != 1 or cluster.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"sample_cluster must be an integer tensor of shape (B,), got {cluster.dtype} "
                f"{tuple(cluster.shape)}"
            )
        if cluster.numel() and (int(cluster.min()) < 0 or int(cluster.max()) >= self.k):
            raise ValueError(
                f"sample_cluster values must lie in [0, {self.k}), got "
                f"[{int(cluster.min())}, {int(cluster.max())}]"
            )
        self.batch_size = cluster.numel()
        self.index = [torch.nonzero(cluster == c).flatten() for c in range(self.k)]

    def __enter__(self) -> GramCapture:
        if _is_compiled(self.net):
            # AOTAutograd fuses each compiled region's backward into one node, so the module outputs the
            # hooks record there get no gradient of their own and the Gram matrix comes out wrong
            # (silently). The hooks cannot work inside compiled code: this forward runs eagerly instead.
            _warn_compiled_once()
            self._stance = torch.compiler.set_stance("force_eager")
        for module in self.net.modules():
            if _direct_params(module):
                self._handles.append(module.register_forward_hook(self._record))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._stance is not None:
            self._stance.__exit__(None, None, None)
            self._stance = None

    def _record(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not torch.is_grad_enabled():
            return
        if not isinstance(output, Tensor):
            raise TypeError(
                f"GramCapture needs a single tensor output from {type(module).__name__}; "
                "use the balancer's engine='autograd' for this network"
            )
        if not output.requires_grad:
            return
        if output.shape[0] != self.batch_size:
            raise ValueError(
                f"{type(module).__name__} output has leading dim {output.shape[0]}, expected the "
                f"batch size {self.batch_size}: per-cluster gradients need batch-first layers"
            )
        root = not any(isinstance(a, Tensor) and a.requires_grad for a in args)
        inputs = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)
        self._calls.append(_Call(module, inputs, output, root, dict(module._parameters)))

    # ---- the Gram pass ---------------------------------------------------------------------------
    def gram(self, total_loss: Tensor, params: Iterable[Tensor]) -> Tensor:
        """K x K float64 Gram matrix of the cluster gradients w.r.t. ``params`` (graph retained).

        ``total_loss`` must be ``sum_k L_k`` (optionally multiplied by a loss scale). In several
        processes the per-layer cluster gradients are averaged before their products are taken, so
        the Gram matrix is that of the union batch.
        """
        params = list(params)
        wanted = {id(p) for p in params}
        if any(is_sharded(p) for p in params):
            wanted = None  # FSDP: every trainable slot of the net (parameter identities change)
        calls, self._calls = self._calls, []
        if not calls:
            raise RuntimeError("GramCapture recorded no forward: run the forward inside `with capture:`")
        counts: dict[int, int] = {}
        for call in calls:
            counts[id(call.module)] = counts.get(id(call.module), 0) + 1
        pending = {key: _Pending(n) for key, n in counts.items() if n > 1}
        gram = torch.zeros(self.k, self.k, dtype=torch.float64, device=total_loss.device)
        covered: set[Any] = set()

        def consume(call: _Call, grad: Tensor | None) -> None:
            call.done = True
            grad = torch.zeros_like(call.output) if grad is None else grad
            flat = self._cluster_grads(call, grad, wanted, covered)
            if flat is None:
                return
            slot = pending.get(id(call.module))
            if slot is not None:
                slot.grads = flat if slot.grads is None else slot.grads + flat
                slot.calls_left -= 1
                if slot.calls_left:
                    return
                flat = slot.grads
            flat = all_reduce_mean_(flat)
            gram.add_((flat @ flat.T).to(torch.float64))

        def hook(call: _Call, grad: Tensor) -> None:
            if not self._local and not call.done:
                consume(call, grad)

        inner = [call for call in calls if not call.root]
        roots = [call for call in calls if call.root]
        handles = [call.output.register_hook(functools.partial(hook, call)) for call in inner]
        try:
            if roots:
                root_grads = torch.autograd.grad(
                    total_loss, [c.output for c in roots], retain_graph=True, allow_unused=True
                )
                for call, grad in zip(roots, root_grads):
                    consume(call, grad)
        finally:
            for handle in handles:
                handle.remove()
        missed = [call for call in inner if not call.done]
        if missed:  # outputs not on a path to a graph source (e.g. fed by a bare parameter): ask directly
            grads = torch.autograd.grad(
                total_loss, [c.output for c in missed], retain_graph=True, allow_unused=True
            )
            for call, grad in zip(missed, grads):
                consume(call, grad)
        if wanted is None:
            if len(covered) != len(params):
                raise ValueError(
                    f"{len(params)} FSDP-sharded parameter tensor(s) were passed to backward but the "
                    f"captured forward used {len(covered)} trainable parameter slot(s); under FSDP pass "
                    "exactly the network's trainable parameters"
                )
            return gram
        uncovered = [p for p in params if id(p) not in covered] if len(covered) < len(wanted) else []
        if uncovered:
            raise ValueError(
                f"{len(uncovered)} parameter tensor(s) passed to backward were not used by the "
                "captured network forward; pass only the network's parameters"
            )
        return gram

    def _cluster_grads(
        self, call: _Call, grad: Tensor, wanted: set[int] | None, covered: set[Any]
    ) -> Tensor | None:
        """(K, n) cluster gradients of the module's own parameters that are in ``wanted`` (None: all)."""
        module = call.module
        names = [
            name
            for name, p in call.params.items()
            if p is not None and p.requires_grad and (wanted is None or id(p) in wanted)
        ]
        if not names:
            return None
        if wanted is None:
            covered.update((id(module), name) for name in names)
        else:
            covered.update(id(call.params[name]) for name in names)
        compute = torch.promote_types(grad.dtype, torch.float32)
        if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
            pieces = self._linear(module, call.inputs[0], grad, names, compute)
        elif (
            isinstance(module, nn.Conv2d)
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        ):
            pieces = self._conv2d(module, call.inputs[0], grad, names, compute)
        elif (
            isinstance(module, nn.Embedding)
            and module.max_norm is None
            and not module.scale_grad_by_freq
            and not module.sparse
        ):
            pieces = self._embedding(module, call.inputs[0], grad, names, compute)
        else:
            pieces = self._generic(call, grad, names, compute)
        return torch.cat(pieces, dim=1)

    def _linear(
        self, module: nn.Linear, inputs: Tensor, grad: Tensor, names: list[str], dtype: torch.dtype
    ) -> list[Tensor]:
        activations = inputs.reshape(self.batch_size, -1, module.in_features)
        grad = grad.reshape(self.batch_size, -1, module.out_features)
        weights, biases = [], []
        for index in self.index:
            g = grad.index_select(0, index).reshape(-1, module.out_features).to(dtype)
            if "weight" in names:
                a = activations.index_select(0, index).reshape(-1, module.in_features).to(dtype)
                weights.append((g.T @ a).reshape(-1))
            if "bias" in names:
                biases.append(g.sum(0))
        return [torch.stack(part) for part in (weights, biases) if part]

    def _conv2d(
        self, module: nn.Conv2d, inputs: Tensor, grad: Tensor, names: list[str], dtype: torch.dtype
    ) -> list[Tensor]:
        weights, biases = [], []
        for index in self.index:
            g = grad.index_select(0, index).to(dtype)
            if "weight" in names:
                a = inputs.index_select(0, index).to(dtype)
                w = torch.nn.grad.conv2d_weight(
                    a, module.weight.shape, g, module.stride, module.padding, module.dilation, module.groups
                )
                weights.append(w.reshape(-1))
            if "bias" in names:
                biases.append(g.sum((0, 2, 3)))
        return [torch.stack(part) for part in (weights, biases) if part]

    def _embedding(
        self, module: nn.Embedding, ids: Tensor, grad: Tensor, names: list[str], dtype: torch.dtype
    ) -> list[Tensor]:
        rows = []
        for index in self.index:
            table = torch.zeros(module.num_embeddings, module.embedding_dim, dtype=dtype, device=grad.device)
            table.index_add_(
                0,
                ids.index_select(0, index).reshape(-1),
                grad.index_select(0, index).reshape(-1, module.embedding_dim).to(dtype),
            )
            if module.padding_idx is not None:
                table[module.padding_idx] = 0
            rows.append(table.reshape(-1))
        return [torch.stack(rows)]

    def _generic(self, call: _Call, grad: Tensor, names: list[str], dtype: torch.dtype) -> list[Tensor]:
        """Any other module: K vector-Jacobian products through the module's own recorded graph."""
        params = [call.params[name] for name in names]
        shape = (self.batch_size,) + (1,) * (grad.dim() - 1)
        rows = []
        self._local = True
        try:
            for index in self.index:
                mask = torch.zeros(shape, dtype=grad.dtype, device=grad.device)
                mask[index] = 1
                grads = torch.autograd.grad(
                    call.output, params, grad_outputs=grad * mask, retain_graph=True, materialize_grads=True
                )
                rows.append(torch.cat([g.reshape(-1).to(dtype) for g in grads]))
        finally:
            self._local = False
        return [torch.stack(rows)]


class GramBalancer(Balancer):
    """Base of the methods whose weights are a function of the cluster-gradient Gram matrix.

    On update steps (every ``update_every`` calls) the Gram matrix comes from :class:`GramCapture`
    (``engine="hooks"``, about one extra backward) or from K autograd backwards
    (``engine="autograd"``, the slow exact reference); the coefficients ``c`` then drive one
    ordinary backward of ``sum_k c_k L_k``. Between updates the coefficients are held and the step
    costs one ordinary backward. Several processes: cluster gradients are averaged before the Gram
    products, so every process computes the union batch's coefficients.
    """

    def __init__(
        self, k: int, update_every: int = 1, max_grad_norm: float | None = None, engine: str = "hooks"
    ) -> None:
        super().__init__(k, max_grad_norm)
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"update_every must be a positive int, got {update_every!r}")
        if engine not in ("hooks", "autograd"):
            raise ValueError(f"engine must be 'hooks' or 'autograd', got {engine!r}")
        self.update_every = update_every
        self.engine = engine
        self.register_buffer("weights", torch.full((k,), 1.0 / k, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._capture: GramCapture | None = None

    def _options(self) -> dict:
        return {**super()._options(), "update_every": self.update_every, "engine": self.engine}

    def coefficients(self, gram: Tensor) -> tuple[Tensor, dict]:
        """Coefficients c (K,) of the cluster losses from the K x K Gram matrix, and extra logs."""
        raise NotImplementedError

    def update_due(self) -> bool:
        """Whether the next backward recomputes the coefficients."""
        return int(self.step) % self.update_every == 0

    def capture(self, net: nn.Module, sample_cluster: Tensor) -> contextlib.AbstractContextManager:
        if self.engine == "autograd" or not self.update_due():
            self._capture = None
            return contextlib.nullcontext()
        self._capture = GramCapture(net, sample_cluster, self.k)
        return self._capture

    def backward(self, cluster_losses: Tensor, params: Iterable[Tensor], scaler: Any | None = None) -> dict:
        self._check_losses(cluster_losses)
        params = self._check_params(params)
        logs: dict[str, Any] = {"updated": self.update_due()}
        if not logs["updated"]:
            coefficients = self.weights.to(cluster_losses.dtype)
            logs.update(self._write_grads((coefficients * cluster_losses).sum(), params, scaler))
        elif self.engine == "autograd":
            if any(is_sharded(p) for p in params):
                raise ValueError(
                    "engine='autograd' differentiates each cluster loss w.r.t. full parameters, which "
                    "FSDP-sharded parameters are not; use engine='hooks' (the default) under FSDP"
                )
            jacobian = all_reduce_mean_(cluster_jacobian(scaled(cluster_losses, scaler), params))
            scale = loss_scale(scaler)
            gram = (jacobian.to(torch.float64) @ jacobian.T.to(torch.float64)) / scale**2
            coefficients = self._solve(gram, logs)
            update = coefficients.to(jacobian.dtype) @ jacobian
            add_to_grads(params, update.split([p.numel() for p in params]))
            logs.update(self._clip(params, scaler))
        else:
            if self._capture is None:
                raise RuntimeError(
                    "on update steps the forward must run inside `with balancer.capture(net, "
                    "sample_cluster):` (or build the balancer with engine='autograd')"
                )
            capture, self._capture = self._capture, None
            scale = loss_scale(scaler)
            gram = capture.gram(scaled(cluster_losses.sum(), scaler), params) / scale**2
            coefficients = self._solve(gram, logs)
            logs.update(
                self._write_grads(
                    (coefficients.to(cluster_losses.dtype) * cluster_losses).sum(), params, scaler
                )
            )
        self.step += 1
        logs["weights"] = self.weights.detach().clone()
        return logs

    def _solve(self, gram: Tensor, logs: dict) -> Tensor:
        """Coefficients from a Gram matrix; a non-finite Gram (AMP overflow) keeps the held ones."""
        logs["gram_finite"] = bool(torch.isfinite(gram).all())
        if logs["gram_finite"]:
            coefficients, extra = self.coefficients(gram)
            self.weights.copy_(coefficients)
            logs.update(extra)
            cosine = cosine_matrix(gram)
            logs["cosine"] = cosine
            logs["conflicts"] = int((cosine.triu(1) < 0).sum())
        return self.weights
