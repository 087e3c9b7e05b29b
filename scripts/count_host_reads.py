"""Host reads of tensor values (item / bool / float / int / tolist / numpy) in one `Trainer.train_step`.

On a GPU each such read is a device sync. Run it against two checkouts to compare them:

    PYTHONPATH=/path/to/checkout python scripts/count_host_reads.py LABEL [--json benchmarks/results/x.json]

It trains a tiny dit_t_dtr_uw_k5 (UW balancer, DTR routing) on digits for one warm-up step, then counts
the reads of three further steps with a TorchFunctionMode.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from zoo.data import load_dataset
from zoo.train import TrainConfig, Trainer

READS = {"item", "__bool__", "__float__", "__int__", "tolist", "numpy", "__index__"}


class CountReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READS:
            self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("label")
    parser.add_argument("--json", default=None, help="merge {label: counts} into this JSON file")
    args = parser.parse_args()

    torch.set_num_threads(1)
    config = TrainConfig(
        model="dit_t_dtr_uw_k5",
        steps=10,
        batch=10,
        out=tempfile.mkdtemp(),
        progress=False,
        lr=1e-3,
        overrides={"hidden_size": 32, "depth": 2, "num_heads": 2},
        sample_steps=3,
        sample_n=10,
    )
    trainer = Trainer(config)
    x0, y = load_dataset("digits").images[:10], torch.arange(10)
    trainer.train_step(x0, y)
    per_step = []
    for _ in range(3):
        trainer.step += 1
        with CountReads() as counter:
            trainer.train_step(x0, y)
        per_step.append(dict(sorted(counter.counts.items())))
    print(f"{args.label}: host reads per train_step {[sum(c.values()) for c in per_step]} {per_step[-1]}")
    if args.json:
        path = Path(args.json)
        payload = json.loads(path.read_text()) if path.is_file() else {}
        payload[args.label] = {"total_per_step": [sum(c.values()) for c in per_step], "by_kind": per_step[-1]}
        path.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
