"""Data-parallel helpers for `torchrun --nproc-per-node N -m zoo train ...` (gloo on CPU, NCCL on GPU).

The network is not wrapped in DistributedDataParallel: every balancer averages the gradients it
writes over the process group itself (mtl/base.py), because Gram-based methods (Nash-MTL, PCGrad)
need the union batch's per-cluster gradients before they combine them, which DDP's per-backward
hooks cannot give. With stratified timesteps each rank holds the same count of every cluster, so
the result is the one-process update on the union batch.

With `--fsdp` the backbone is sharded instead (`shard_model`: FSDP2's `fully_shard` per transformer
block / U-Net res and attention block, plus the root): parameters, gradients, AdamW moments and
the EMA live as DTensor shards, FSDP's reduce-scatter averages the gradients and the balancers
average only what is not a sharded gradient (mtl/base.py). Checkpoints stay full state dicts
(`full_state_dict`, `full_optimizer_state_dict`: gathered to rank 0 on CPU), in the layout of a
one-process run, so either kind of run resumes from the other's checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from zoo.models.adm import AttentionBlock, ResBlock


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: rank, world size, local rank and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, samples and writes checkpoints."""
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistributedContext:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); a single process otherwise.

    `device` "cpu" or "cuda" picks the backend (gloo or NCCL); default: CUDA when available.
    """
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=target)


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers to every rank (identical starting weights)."""
    if not dist.is_initialized():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=src)


def all_reduce_mean(value: torch.Tensor, world_size: int) -> torch.Tensor:
    """The mean of `value` over ranks (a copy; for logging losses)."""
    if world_size <= 1:
        return value
    reduced = value.detach().clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / world_size


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- FSDP


def fsdp_units(net: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks that each become one FSDP unit: DiT's transformer blocks, ADM's res and attention blocks."""

    blocks = getattr(net, "blocks", None)
    if isinstance(blocks, torch.nn.ModuleList):
        return list(blocks)
    return [module for module in net.modules() if isinstance(module, (ResBlock, AttentionBlock))]


def shard_model(net: torch.nn.Module, param_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """`fully_shard` every block of `net` (see `fsdp_units`), then the root, over all processes (in place).

    `param_dtype` (e.g. bfloat16) is FSDP's mixed precision: parameters are all-gathered and
    computed in it; gradients are reduced in float32 and the sharded masters stay float32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(
        param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None
    )
    for block in fsdp_units(net):
        fully_shard(block, mp_policy=policy)
    fully_shard(net, mp_policy=policy)
    return net


def reshard(net: torch.nn.Module) -> None:
    """Put every FSDP unit of `net` back in its sharded state.

    The root unit stays unsharded after a forward without grad (FAMO's re-evaluation, sampling);
    between steps every parameter must be its DTensor shard again (the EMA pairs shards).
    """
    from torch.distributed.fsdp import FSDPModule

    for module in net.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def _full(tensor: Any) -> Any:
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_state_dict(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict of an FSDP-sharded `net`, on CPU on rank 0 (empty elsewhere); a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full (unsharded) state dict, present on every rank, into an FSDP-sharded `net`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(net, state, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state_dict(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`optimizer.state_dict()` with every sharded state gathered to a full CPU tensor (a collective).

    The layout (integer parameter indices) is that of a one-process run, so the checkpoint loads there too.
    """
    state = optimizer.state_dict()
    rank = dist.get_rank() if dist.is_initialized() else 0
    gathered = {
        index: {key: _full(value) for key, value in values.items()}
        for index, values in state["state"].items()
    }
    if rank != 0:
        return {}
    cpu = {
        index: {
            key: value.cpu() if isinstance(value, torch.Tensor) else value for key, value in values.items()
        }
        for index, values in gathered.items()
    }
    return {"state": cpu, "param_groups": state["param_groups"]}


def load_full_optimizer_state_dict(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full optimizer state dict (present on every rank) into an optimizer over FSDP-sharded params.

    Each full state tensor shaped like its parameter is cut to this rank's shard (no communication).
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [param for group in optimizer.param_groups for param in group["params"]]
    sharded_state: dict[int, dict[str, Any]] = {}
    for index, values in state["state"].items():
        param = params[int(index)]
        sharded_state[index] = {
            key: distribute_tensor(
                value.to(param.device), param.device_mesh, param.placements, src_data_rank=None
            )
            if isinstance(param, DTensor) and isinstance(value, torch.Tensor) and value.shape == param.shape
            else value
            for key, value in values.items()
        }
    optimizer.load_state_dict({"state": sharded_state, "param_groups": state["param_groups"]})
