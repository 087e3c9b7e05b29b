"""Test-wide settings: offline Hub, one torch thread per xdist worker (2 workers share 2 cores)."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module, also without xdist (tiny models gain nothing from intra-op threads;
    large eigendecompositions on contended threads are many times slower). Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """The package's on-disk cache (URL weights, reference features) in a fresh folder: a test neither
    reads what an earlier run left in ~/.cache nor leaves anything there."""
    previous = os.environ.get("ZOO_CACHE")
    os.environ["ZOO_CACHE"] = str(tmp_path_factory.mktemp("zoo_cache"))
    yield
    if previous is None:
        os.environ.pop("ZOO_CACHE", None)
    else:
        os.environ["ZOO_CACHE"] = previous
