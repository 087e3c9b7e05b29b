"""Test-wide settings: offline Hub, one torch thread per xdist worker (2 workers share 2 cores)."""

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
