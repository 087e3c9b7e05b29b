"""Two CPU processes (gloo) train exactly like one process on the union batch, for every balancer."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.mtl_nets import TinyNet, cluster_losses, make_batch
from zoo import mtl

K = 3
STEPS = 3
METHODS = {  # label -> (balancer, options)
    "linear": ("linear", {}),
    "uw": ("uw", {}),
    "famo": ("famo", {}),
    "nash": ("nash", {"update_every": 2}),  # an update step, a held step, an update step
    "pcgrad": ("pcgrad", {}),  # the update from kept output gradients (the default keep="inputs")
    "pcgrad/grads": ("pcgrad", {"keep": "grads"}),  # from kept cluster gradients
    "imtl/backward": ("imtl", {"keep": "backward"}),  # from a second, ordinary backward
}


def _rank_batch(batch, rank: int, world: int):
    """This rank's share: the same number of samples of every cluster on every rank."""
    keep = (torch.arange(len(batch[0])) // K) % world == rank
    return tuple(part[keep] for part in batch)


def _train(name: str, batch) -> torch.Tensor:
    torch.manual_seed(0)
    net = TinyNet().double()
    method, options = METHODS[name]
    balancer = mtl.build(method, K, **options).double()
    optimizer = torch.optim.SGD([{"params": net.parameters()}, *balancer.parameter_groups()], lr=0.05)
    for _ in range(STEPS):
        optimizer.zero_grad()
        with balancer.capture(net, batch[4]):
            losses = cluster_losses(net, batch, K)
        balancer.backward(losses, net.parameters())
        optimizer.step()
        if balancer.needs_after_step:
            with torch.no_grad():
                balancer.after_step(cluster_losses(net, batch, K))
    state = [p.detach().reshape(-1) for p in net.parameters()]
    state += [
        t.detach().double().reshape(-1)
        for t in [*balancer.parameters(), *balancer.buffers()]
        if t.is_floating_point()
    ]
    return torch.cat(state)


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        batch = _rank_batch(make_batch(K, 4, seed=1), rank, world)
        results = {name: _train(name, batch) for name in METHODS}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process_on_the_union_batch(tmp_path):
    out = tmp_path / "distributed.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    distributed = torch.load(out)
    union = make_batch(K, 4, seed=1)
    for name in METHODS:
        single = _train(name, union)
        torch.testing.assert_close(
            distributed[name], single, rtol=1e-6, atol=1e-9, equal_nan=True, msg=f"{name} differs"
        )
        local_only = _train(name, _rank_batch(union, 0, 2))  # what an unsynchronised rank 0 would reach
        assert (local_only - single).nan_to_num().abs().max() > 1e-4
