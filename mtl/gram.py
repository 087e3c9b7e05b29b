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

The update ``sum_k c_k g_k`` is linear in the cluster gradients, so the same pass can also keep what
builds it once the coefficients are known (``keep`` of :meth:`GramCapture.gram`, then
:meth:`GramCapture.update`), and no ordinary backward follows: ``keep="inputs"`` keeps each layer's
output gradient (its input is held) and then costs ONE weight-gradient GEMM per layer with the
output gradient scaled per sample by ``c[cluster]`` (``nn.Conv2d``: one ``conv2d_weight``,
``nn.Embedding``: one ``index_add``); ``keep="grads"`` keeps the K cluster gradients of every layer
(already formed for the Gram) and the update is ``c @ rows`` per layer, no GEMM; ``keep="auto"``
chooses per layer whichever of the two holds fewer numbers. Modules without a fast path (local
autograd VJPs) keep their K rows. That pass frees the graph as it goes: outputs it would skip (a
backward down to the first layers' outputs does not run the nodes upstream of them) are found by a
walk of the graph beforehand and asked for too.

Each layer's K cluster gradients are written in place, one (K, n) block per parameter. Each cluster's
rows of a layer's input and output gradient are one slice: a batch that interleaves the clusters (the
stratified sampler's) is sorted by cluster for the forward of the net and its output put back in the
caller's order (:class:`GramCapture`), so no layer gathers rows; when the K clusters are equal slices a
Linear's K products are one batched GEMM. The Gram products are K matrix-vector products per block.

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

from .base import Balancer, add_to_grads, all_reduce_mean_, is_sharded, loss_scale, scaled, world_size


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


def _fast_kind(module: nn.Module) -> str | None:
    """Which closed-form weight gradient a module has ("linear", "conv2d", "embedding"), or None."""
    if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
        return "linear"
    if (
        isinstance(module, nn.Conv2d)
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    ):
        return "conv2d"
    if (
        isinstance(module, nn.Embedding)
        and module.max_norm is None
        and not module.scale_grad_by_freq
        and not module.sparse
    ):
        return "embedding"
    return None


def _unreached(total_loss: Tensor, roots: list[_Call], inner: list[_Call]) -> list[_Call]:
    """The inner calls whose output a backward of ``total_loss`` down to the roots' outputs skips.

    Autograd runs a node only when one of its inputs leads to a node whose gradient was asked for;
    an inner output whose node runs (or is asked for) gets its hook called, the others do not.
    """
    targets = {call.output.grad_fn for call in roots}
    start = total_loss.grad_fn
    if start is None:
        return list(inner)
    parents: dict[Any, int] = {start: 0}  # reachable nodes -> number of their reachable parents
    stack = [start]
    while stack:
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is None:
                continue
            if child not in parents:
                parents[child] = 0
                stack.append(child)
            parents[child] += 1
    order, ready = [], [start]  # parents before children
    while ready:
        node = ready.pop()
        order.append(node)
        for child, _ in node.next_functions:
            if child is not None:
                parents[child] -= 1
                if not parents[child]:
                    ready.append(child)
    needed: set[Any] = set()
    for node in reversed(order):
        if any(child in targets or child in needed for child, _ in node.next_functions if child is not None):
            needed.add(node)
    return [call for call in inner if not (call.output.grad_fn in needed or call.output.grad_fn in targets)]


@dataclass
class _Layout:
    """Where each cluster's samples lie in a batch as a layer saw it."""

    cluster: Tensor  # (B,) the cluster of each row
    index: list[Tensor]  # per cluster: its rows
    runs: list[slice | None]  # per cluster: its rows as one slice, where they are one contiguous run
    equal: int  # B // K when cluster k is exactly the rows [k B/K, (k + 1) B/K); else 0

    @classmethod
    def of(cls, cluster: Tensor, k: int) -> _Layout:
        on_host = cluster.cpu()  # one device sync; the runs are read on the host
        index = [torch.nonzero(on_host == c).flatten() for c in range(k)]
        runs = [
            slice(int(i[0]), int(i[0]) + i.numel())
            if i.numel() and int(i[-1] - i[0]) + 1 == i.numel()
            else None
            for i in index
        ]
        runs = [slice(0, 0) if not i.numel() else run for i, run in zip(index, runs)]
        size = cluster.numel() // k if k else 0
        equal = size if size and all(r == slice(c * size, (c + 1) * size) for c, r in enumerate(runs)) else 0
        return cls(cluster, [i.to(cluster.device) for i in index], runs, equal)

    @property
    def contiguous(self) -> bool:
        return all(run is not None for run in self.runs)

    def rows(self, tensor: Tensor, k: int) -> Tensor:
        """The rows of cluster ``k`` of a batch-first tensor: a view when they are one contiguous run."""
        run = self.runs[k]
        return tensor[run] if run is not None else tensor.index_select(0, self.index[k])


@dataclass
class _Call:
    module: nn.Module
    inputs: tuple
    output: Tensor
    root: bool
    params: dict[str, Tensor]  # the module's parameters as the forward used them (FSDP: unsharded)
    layout: _Layout  # the batch order this call saw (the capture's sorted one inside the net's forward)
    done: bool = False


@dataclass
class _Pending:
    calls_left: int
    grads: list[Tensor] | None = None


def _batch_map(value: Any, batch_size: int, order: Tensor) -> Any:
    """``value`` with every tensor of leading dimension ``batch_size`` (in tuples, lists, dicts) reordered."""
    if isinstance(value, Tensor):
        if value.dim() and value.shape[0] == batch_size:
            return value.index_select(0, order.to(value.device))
        return value
    if isinstance(value, tuple | list):
        return type(value)(_batch_map(v, batch_size, order) for v in value)
    if isinstance(value, dict):
        return {key: _batch_map(v, batch_size, order) for key, v in value.items()}
    return value


def _gram_of(rows: Tensor) -> Tensor:
    """``rows @ rows.T`` in float64 for a (K, n) block of a few long rows: K matrix-vector products of
    the lower triangle (a GEMM with K outputs per side reads the block more slowly)."""
    k = rows.shape[0]
    gram = torch.empty(k, k, dtype=torch.float64, device=rows.device)
    for i in range(k):
        column = (rows[: i + 1] @ rows[i]).to(torch.float64)
        gram[i, : i + 1] = column
        gram[: i + 1, i] = column
    return gram


KEEP_MODES = ("auto", "inputs", "grads")


@dataclass
class GramCapture:
    """Records one forward of ``net`` so that :meth:`gram` gives the K x K cluster-gradient Gram matrix.

    ``sample_cluster`` (B,) is each sample's cluster. Use as a context manager around the forward.

    When the clusters are not contiguous runs of the batch (a stratified batch interleaves them), the
    capture sorts the batch by cluster for the forward of ``net`` (every tensor argument whose leading
    dimension is the batch size is reordered) and restores the order of its output exactly, so each
    layer's cluster rows are one slice (no gather per layer and cluster). The samples are computed
    independently either way; only random draws inside the forward (label dropout) fall on other samples.
    """

    net: nn.Module
    sample_cluster: Tensor
    k: int
    _calls: list[_Call] = field(default_factory=list)
    _handles: list[Any] = field(default_factory=list)
    _local: bool = False
    _stance: Any = None
    _kept: list[tuple] = field(default_factory=list)
    _kept_params: list[Tensor] = field(default_factory=list)
    _kept_mode: str | None = None
    _inside: int = 0  # depth of the net's forwards that run on the sorted batch

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
        self._natural = _Layout.of(cluster, self.k)
        self._order: Tensor | None = None  # the sorting permutation of the batch, where one is needed
        self._sorted = self._natural
        if not self._natural.contiguous:
            self._order = torch.argsort(cluster, stable=True)
            self._inverse = torch.argsort(self._order)
            self._sorted = _Layout.of(cluster[self._order], self.k)

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
        if self._order is not None:  # registered after the records: the net's own record sees sorted rows
            self._handles.append(self.net.register_forward_pre_hook(self._sort_batch, with_kwargs=True))
            self._handles.append(self.net.register_forward_hook(self._restore_batch))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._inside = 0
        if self._stance is not None:
            self._stance.__exit__(None, None, None)
            self._stance = None

    def _sort_batch(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        self._inside += 1
        if self._inside > 1 or self._order is None:
            return None
        return _batch_map(args, self.batch_size, self._order), _batch_map(
            kwargs, self.batch_size, self._order
        )

    def _restore_batch(self, module: nn.Module, args: tuple, output: Any) -> Any:
        self._inside -= 1
        if self._inside or self._order is None:
            return None
        return _batch_map(output, self.batch_size, self._inverse)

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
        layout = self._sorted if self._inside else self._natural
        self._calls.append(_Call(module, inputs, output, root, dict(module._parameters), layout))

    # ---- the Gram pass ---------------------------------------------------------------------------
    def gram(self, total_loss: Tensor, params: Iterable[Tensor], keep: str | None = None) -> Tensor:
        """K x K float64 Gram matrix of the cluster gradients w.r.t. ``params``.

        ``total_loss`` must be ``sum_k L_k`` (optionally multiplied by a loss scale). In several
        processes the per-layer cluster gradients are averaged before their products are taken, so
        the Gram matrix is that of the union batch. ``keep=None``: the graph is retained (for an
        ordinary backward afterwards). ``keep="inputs"`` or ``"grads"``: the pass frees the graph
        and keeps what :meth:`update` needs to build ``sum_k c_k g_k`` (see the module docstring);
        not under FSDP (sharded parameters).
        """
        params = list(params)
        wanted = {id(p) for p in params}
        if keep is not None and keep not in KEEP_MODES:
            raise ValueError(f"keep must be None or one of {list(KEEP_MODES)}, got {keep!r}")
        if any(is_sharded(p) for p in params):
            if keep is not None:
                raise ValueError(
                    "keep= builds full parameter gradients, which FSDP-sharded parameters do not take; "
                    "use keep=None and an ordinary backward under FSDP"
                )
            wanted = None  # FSDP: every trainable slot of the net (parameter identities change)
        self._kept, self._kept_params, self._kept_mode = [], params if keep is not None else [], keep
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
            result = self._cluster_grads(call, grad, wanted, covered)
            call.output = None  # its gradient is in hand: let the output go
            if result is None:
                call.inputs = ()
                return
            pieces, names, fast = result
            slot = pending.get(id(call.module))
            kind = self._kind(keep, fast, slot is not None, call, grad, sum(p.shape[1] for p in pieces))
            if kind == "output":  # keep the output gradient (the input is held): one product later
                self._kept.append(("output", call, names, grad))
            else:
                call.inputs = ()  # nothing of this call's input is needed any more
            if kind == "local rows":
                self._kept.append((kind, call, names, pieces))
            if slot is not None:
                slot.grads = pieces if slot.grads is None else [a + b for a, b in zip(slot.grads, pieces)]
                slot.calls_left -= 1
                if slot.calls_left:
                    return
                pieces = slot.grads
            if world_size() > 1:  # one reduction per layer
                flat = all_reduce_mean_(torch.cat(pieces, dim=1))
                pieces = list(flat.split([p.shape[1] for p in pieces], dim=1))
            if kind == "rows":
                self._kept.append((kind, call, names, pieces))
            for piece in pieces:
                gram.add_(_gram_of(piece))

        def hook(call: _Call, grad: Tensor) -> None:
            if not self._local and not call.done:
                consume(call, grad)

        inner = [call for call in calls if not call.root]
        roots = [call for call in calls if call.root]
        if keep is not None:
            # One pass that frees the graph as it goes. The outputs that a backward down to the root
            # outputs would not reach (their hooks would not fire) are made inputs of it too.
            missed = _unreached(total_loss, roots, inner)
            # every output is consumed in its hook, before autograd frees the graph below it (a module
            # without a fast path differentiates through its own piece of the graph there)
            handles = [call.output.register_hook(functools.partial(hook, call)) for call in calls]
            asked = roots + missed
            try:
                grads = torch.autograd.grad(total_loss, [c.output for c in asked], allow_unused=True)
            finally:
                for handle in handles:
                    handle.remove()
            for call, grad in zip(asked, grads):
                if not call.done:
                    consume(call, grad)
            del grads
            for call in inner:  # outputs the loss does not depend on: zero gradients
                if not call.done:
                    consume(call, None)
            self._check_covered(params, wanted, covered)
            return gram
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
        self._check_covered(params, wanted, covered)
        return gram

    def _kind(
        self, keep: str | None, fast: bool, shared: bool, call: _Call, grad: Tensor | None, n: int
    ) -> str | None:
        """What a call leaves for :meth:`update`: "output" (its output gradient, the input held),
        "local rows" (its own K cluster gradients), "rows" (the module's K cluster gradients, summed
        over its calls and averaged over processes) or None (nothing: no keep, or a zero gradient)."""
        if keep is None:
            return None
        if fast and (keep == "inputs" or (keep == "auto" and (shared or self._smaller(call, grad, n)))):
            return None if grad is None else "output"
        if keep == "inputs":
            return "local rows"
        return "rows"

    def _smaller(self, call: _Call, grad: Tensor | None, n: int) -> bool:
        """Whether the layer's input and output gradient take fewer elements than its K cluster gradients."""
        return grad is not None and call.inputs[0].numel() + grad.numel() < self.k * n

    @staticmethod
    def _check_covered(params: list[Tensor], wanted: set[int] | None, covered: set[Any]) -> None:
        if wanted is None:
            if len(covered) != len(params):
                raise ValueError(
                    f"{len(params)} FSDP-sharded parameter tensor(s) were passed to backward but the "
                    f"captured forward used {len(covered)} trainable parameter slot(s); under FSDP pass "
                    "exactly the network's trainable parameters"
                )
            return
        uncovered = [p for p in params if id(p) not in covered] if len(covered) < len(wanted) else []
        if uncovered:
            raise ValueError(
                f"{len(uncovered)} parameter tensor(s) passed to backward were not used by the "
                "captured network forward; pass only the network's parameters"
            )

    def update(self, coefficients: Tensor) -> list[Tensor]:
        """``sum_k c_k g_k`` per parameter (in the order given to :meth:`gram`) from what it kept.

        Needs a preceding ``gram(..., keep="inputs" | "grads")``; in several processes the result is
        the union batch's (kept output gradients: the local update is averaged; kept cluster
        gradients were averaged already). Parameters the loss did not reach get zeros.
        """
        params, kept = self._kept_params, self._kept
        mode, self._kept, self._kept_params = self._kept_mode, [], []
        if not params:
            raise RuntimeError("update() needs a preceding gram(..., keep='inputs' or 'grads')")
        if coefficients.shape != (self.k,):
            raise ValueError(f"coefficients must have shape ({self.k},), got {tuple(coefficients.shape)}")
        position = {id(p): i for i, p in enumerate(params)}
        local: list[Tensor | None] = [None] * len(params)  # this process's share: averaged below
        averaged: list[Tensor | None] = [None] * len(params)  # built from averaged cluster gradients
        for kind, call, names, held in kept:
            if kind == "output":  # a fast layer's output gradient: one weight-gradient GEMM, c[cluster]
                pieces = self._combined(call, held, names, coefficients)
            else:  # per parameter (K, n): the K cluster gradients of the module's parameters
                pieces = [coefficients.to(rows.device, rows.dtype) @ rows for rows in held]
            totals = averaged if kind == "rows" else local
            for name, piece in zip(names, pieces):
                i = position[id(call.params[name])]
                piece = piece.reshape(params[i].shape)
                totals[i] = piece if totals[i] is None else totals[i] + piece
        if world_size() > 1 and mode in ("auto", "inputs"):  # the same call on every process
            local = [torch.zeros_like(p) if t is None else t.to(p.dtype) for p, t in zip(params, local)]
            flat = all_reduce_mean_(torch.cat([g.reshape(-1) for g in local]))
            local = [g.reshape(p.shape) for g, p in zip(flat.split([p.numel() for p in params]), params)]
        grads = []
        for p, mine, total in zip(params, local, averaged):
            if mine is None and total is None:
                grads.append(torch.zeros_like(p))
            elif mine is None or total is None:
                grads.append((mine if total is None else total).to(p.dtype))
            else:
                grads.append(mine.to(p.dtype) + total.to(p.dtype))
        return grads

    def _cluster_grads(
        self, call: _Call, grad: Tensor | None, wanted: set[int] | None, covered: set[Any]
    ) -> tuple[list[Tensor], list[str], bool] | None:
        """Per parameter of the module's own in ``wanted`` (None: all), its (K, n) cluster gradients.

        Returns them with the parameter names in their order and whether the module has a fast path.
        """
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
        kind = _fast_kind(module)
        if kind is not None:
            names = [name for name in ("weight", "bias") if name in names]
        if grad is None:  # the loss does not depend on this output: zero cluster gradients
            first = call.params[names[0]]
            dtype = torch.promote_types(first.dtype, torch.float32)
            pieces = [
                torch.zeros(self.k, call.params[name].numel(), dtype=dtype, device=first.device)
                for name in names
            ]
            return pieces, names, kind is not None
        compute = torch.promote_types(grad.dtype, torch.float32)
        pieces = [  # filled in place
            torch.empty(self.k, call.params[name].numel(), dtype=compute, device=grad.device)
            for name in names
        ]
        if kind is None:
            self._generic(call, grad, names, pieces)
        else:
            method = {"linear": self._linear, "conv2d": self._conv2d, "embedding": self._embedding}[kind]
            method(call, grad, dict(zip(names, pieces)))
        return pieces, names, kind is not None

    def _combined(self, call: _Call, grad: Tensor, names: list[str], coefficients: Tensor) -> list[Tensor]:
        """``sum_k c_k`` (cluster gradient k) of a fast layer's parameters: one product, c per sample."""
        module, inputs = call.module, call.inputs[0]
        dtype = torch.promote_types(grad.dtype, torch.float32)
        scale = coefficients.to(grad.device, dtype)[call.layout.cluster.to(grad.device)]  # (B,)
        grad = grad.to(dtype)
        kind = _fast_kind(module)
        pieces = []
        if kind == "linear":
            g = grad.reshape(self.batch_size, -1, module.out_features)
            a = inputs.reshape(self.batch_size, -1, module.in_features).to(dtype)
            if "weight" in names:  # scale the narrower operand
                if module.out_features <= module.in_features:
                    pieces.append(
                        (g * scale[:, None, None]).reshape(-1, module.out_features).T @ a.flatten(0, 1)
                    )
                else:
                    pieces.append(g.flatten(0, 1).T @ (a * scale[:, None, None]).flatten(0, 1))
            if "bias" in names:
                pieces.append(scale @ g.sum(1))
        elif kind == "conv2d":
            if "weight" in names:
                pieces.append(
                    torch.nn.grad.conv2d_weight(
                        inputs.to(dtype),
                        module.weight.shape,
                        grad * scale[:, None, None, None],
                        module.stride,
                        module.padding,
                        module.dilation,
                        module.groups,
                    )
                )
            if "bias" in names:
                pieces.append(scale @ grad.sum((2, 3)))
        else:
            table = torch.zeros(module.num_embeddings, module.embedding_dim, dtype=dtype, device=grad.device)
            scaled_grad = grad.reshape(self.batch_size, -1, module.embedding_dim) * scale[:, None, None]
            table.index_add_(0, inputs.reshape(-1), scaled_grad.reshape(-1, module.embedding_dim))
            if module.padding_idx is not None:
                table[module.padding_idx] = 0
            pieces.append(table)
        return pieces

    def _linear(self, call: _Call, grad: Tensor, out: dict[str, Tensor]) -> None:
        """Cluster k's weight gradient ``G_k^T A_k`` into row k of ``out["weight"]``, its bias one likewise."""
        module, layout = call.module, call.layout
        weight, bias = out.get("weight"), out.get("bias")
        grad = grad.reshape(self.batch_size, -1, module.out_features)
        activations = call.inputs[0].reshape(self.batch_size, -1, module.in_features)
        dtype = (weight if weight is not None else bias).dtype
        if layout.equal:  # cluster k is the k-th of K equal slices: one batched product
            g = grad.reshape(self.k, -1, module.out_features).to(dtype)
            if weight is not None:
                a = activations.reshape(self.k, -1, module.in_features).to(dtype)
                torch.bmm(
                    g.transpose(1, 2), a, out=weight.view(self.k, module.out_features, module.in_features)
                )
            if bias is not None:
                torch.sum(g, 1, out=bias)
            return
        for k in range(self.k):
            g = layout.rows(grad, k).reshape(-1, module.out_features).to(dtype)
            if weight is not None:
                a = layout.rows(activations, k).reshape(-1, module.in_features).to(dtype)
                torch.mm(g.T, a, out=weight[k].view(module.out_features, module.in_features))
            if bias is not None:
                torch.sum(g, 0, out=bias[k])

    def _conv2d(self, call: _Call, grad: Tensor, out: dict[str, Tensor]) -> None:
        module, layout = call.module, call.layout
        weight, bias = out.get("weight"), out.get("bias")
        for k in range(self.k):
            g = layout.rows(grad, k).to((weight if weight is not None else bias).dtype)
            if weight is not None:
                a = layout.rows(call.inputs[0], k).to(weight.dtype)
                w = torch.nn.grad.conv2d_weight(
                    a, module.weight.shape, g, module.stride, module.padding, module.dilation, module.groups
                )
                weight[k].copy_(w.reshape(-1))
            if bias is not None:
                torch.sum(g, (0, 2, 3), out=bias[k])

    def _embedding(self, call: _Call, grad: Tensor, out: dict[str, Tensor]) -> None:
        module, layout, rows = call.module, call.layout, out["weight"]
        for k in range(self.k):
            table = rows[k].view(module.num_embeddings, module.embedding_dim).zero_()
            table.index_add_(
                0,
                layout.rows(call.inputs[0], k).reshape(-1),
                layout.rows(grad, k).reshape(-1, module.embedding_dim).to(rows.dtype),
            )
            if module.padding_idx is not None:
                table[module.padding_idx] = 0

    def _generic(self, call: _Call, grad: Tensor, names: list[str], out: list[Tensor]) -> None:
        """Any other module: K vector-Jacobian products through the module's own recorded graph."""
        params = [call.params[name] for name in names]
        shape = (self.batch_size,) + (1,) * (grad.dim() - 1)
        self._local = True
        try:
            for k, index in enumerate(call.layout.index):
                mask = torch.zeros(shape, dtype=grad.dtype, device=grad.device)
                mask[index] = 1
                grads = torch.autograd.grad(
                    call.output, params, grad_outputs=grad * mask, retain_graph=True, materialize_grads=True
                )
                for rows, g in zip(out, grads):
                    rows[k].copy_(g.reshape(-1))
        finally:
            self._local = False


class GramBalancer(Balancer):
    """Base of the methods whose weights are a function of the cluster-gradient Gram matrix.

    On update steps (every ``update_every`` calls) the Gram matrix comes from :class:`GramCapture`
    (``engine="hooks"``) or from K autograd backwards (``engine="autograd"``, the slow exact
    reference, which then combines its K full gradients). With the hooks, ``keep`` says how the
    update ``sum_k c_k g_k`` is built once the coefficients ``c`` are known, all from ONE backward:
    ``"auto"`` (default) keeps per layer the smaller of its K cluster gradients and its input +
    output gradient (on DiT-S at 32x32 the big block layers keep their cluster gradients, the adaLN
    layers their output gradients), so the step costs about one forward + one backward and the
    memory of plain training; ``"grads"`` always keeps the K cluster gradients (no product after the
    solve; K x P memory at most); ``"inputs"`` always keeps the output gradients (one
    weight-gradient GEMM per layer after the solve: about 1.5 backwards); ``"backward"`` builds it by
    an ordinary backward of ``sum_k c_k L_k`` after the Gram pass (about two backwards; what
    FSDP-sharded parameters always use, as FSDP's reduce-scatter must produce their gradients).
    Between updates the coefficients are held and the step costs one ordinary backward. Several processes: cluster gradients are
    averaged before the Gram products, so every process computes the union batch's coefficients.
    """

    def __init__(
        self,
        k: int,
        update_every: int = 1,
        max_grad_norm: float | None = None,
        engine: str = "hooks",
        keep: str = "auto",
    ) -> None:
        super().__init__(k, max_grad_norm)
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"update_every must be a positive int, got {update_every!r}")
        if engine not in ("hooks", "autograd"):
            raise ValueError(f"engine must be 'hooks' or 'autograd', got {engine!r}")
        if keep not in (*KEEP_MODES, "backward"):
            raise ValueError(f"keep must be one of {[*KEEP_MODES, 'backward']}, got {keep!r}")
        self.update_every = update_every
        self.engine = engine
        self.keep = keep
        self.register_buffer("weights", torch.full((k,), 1.0 / k, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._capture: GramCapture | None = None

    def _options(self) -> dict:
        return {
            **super()._options(),
            "update_every": self.update_every,
            "engine": self.engine,
            "keep": self.keep,
        }

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

    def backward(
        self,
        cluster_losses: Tensor,
        params: Iterable[Tensor],
        scaler: Any | None = None,
        capture: Any = None,
        clip: bool = True,
    ) -> dict:
        self._check_losses(cluster_losses)
        params = self._check_params(params)
        logs: dict[str, Any] = {"updated": self.update_due()}
        if not logs["updated"]:
            coefficients = self.weights.to(cluster_losses.dtype)
            logs.update(self._write_grads((coefficients * cluster_losses).sum(), params, scaler, clip))
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
            if clip:
                logs.update(self._clip(params, scaler))
        else:
            if capture is None:  # the single-forward protocol: the one the last `capture` opened
                capture = self._capture
            if self._capture is capture:
                self._capture = None
            if not isinstance(capture, GramCapture):
                raise RuntimeError(
                    "on update steps the forward must run inside `with balancer.capture(net, "
                    "sample_cluster):` (or build the balancer with engine='autograd')"
                )
            scale = loss_scale(scaler)
            keep = None if self.keep == "backward" or any(is_sharded(p) for p in params) else self.keep
            gram = capture.gram(scaled(cluster_losses.sum(), scaler), params, keep=keep) / scale**2
            coefficients = self._solve(gram, logs)
            if keep is None:
                logs.update(
                    self._write_grads(
                        (coefficients.to(cluster_losses.dtype) * cluster_losses).sum(), params, scaler, clip
                    )
                )
            else:  # built from the Gram pass, in the scaled domain like a scaled backward
                add_to_grads(params, capture.update(coefficients), owned=True)  # fresh tensors
                if clip:
                    logs.update(self._clip(params, scaler))
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
