"""The real wheel (issue 16): built once per session, installed with pip into a folder, used by a user's project.

The repository keeps the parts beside zoo/ (models/ routing/ mtl/ clustering/); the wheel must install them as
zoo.models, zoo.routing, ... and nothing else at top level, so a user's own `models` or `routing` still wins.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = {"models": "zoo/models", "routing": "zoo/routing", "mtl": "zoo/mtl", "clustering": "zoo/clustering"}
SOURCE_DIRS = {"zoo": "zoo", **PARTS}
#: what the build does not need (and setuptools' own outputs, which must not leak in from a local build)
IGNORED = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".ruff_cache",
    "runs",
)

pytestmark = pytest.mark.slow


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    )
    return done


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """Copy the checkout (setuptools writes build/ and *.egg-info into the source), build the wheel offline,
    install it with pip into TMP/site; a user project TMP/userproject has its own `models` and `routing`."""
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=IGNORED)
    dist = tmp / "dist"
    pip = [sys.executable, "-m", "pip"]
    _run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(dist), "."],
        cwd=source,
    )
    wheels = sorted(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    site = tmp / "site"
    _run([*pip, "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheels[0])])
    user = tmp / "userproject"
    (user / "models").mkdir(parents=True)
    (user / "models" / "__init__.py").write_text("MINE = 1\n")
    (user / "routing.py").write_text("MINE = 2\n")
    return {"wheel": wheels[0], "site": site, "user": user}


def _user_python(built: dict[str, Path], code: str) -> dict:
    """Run code in the user's project, the installed wheel on the path (not this checkout); returns its JSON."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        PYTHONPATH=f"{built['site']}{os.pathsep}{built['user']}", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"
    )
    done = _run([sys.executable, "-c", textwrap.dedent(code)], cwd=built["user"], env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_wheel_installs_only_zoo_at_top_level(built):
    names = _names(built["wheel"])
    tops = {name.split("/")[0] for name in names}
    dist_info = {top for top in tops if top.endswith(".dist-info")}
    assert len(dist_info) == 1 and tops - dist_info == {"zoo"}, sorted(tops)
    installed = {p.name for p in built["site"].iterdir()} - {"bin"}
    assert installed == {"zoo", *dist_info}, sorted(installed)


def test_wheel_holds_every_source_module(built):
    """Every .py of zoo/ and the parts, at its installed path: pyproject's package list misses none."""
    names = set(_names(built["wheel"]))
    missing = []
    for folder, installed in SOURCE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            target = f"{installed}/{path.relative_to(ROOT / folder).as_posix()}"
            if target not in names:
                missing.append(target)
    assert not missing, (
        f"not in the wheel (add the package to pyproject's [tool.setuptools] packages): {missing}"
    )


def test_wheel_ships_the_pretrained_weights_unchanged(built):
    shipped = sorted(
        p for p in (ROOT / "zoo" / "pretrained").rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    assert any(p.name == "model.safetensors" for p in shipped)
    with zipfile.ZipFile(built["wheel"]) as archive:
        names = set(archive.namelist())
        for path in shipped:
            name = path.relative_to(ROOT).as_posix()
            assert name in names, f"{name} is not in the wheel"
            got = hashlib.sha256(archive.read(name)).hexdigest()
            assert got == hashlib.sha256(path.read_bytes()).hexdigest(), f"{name} differs in the wheel"


def test_installed_list_and_info_read_the_shipped_index_without_torch(built):
    """zoo/registry_index.json is package data: the installed `zoo list` / `zoo info` answer from it, no torch."""
    index = "zoo/registry_index.json"
    with zipfile.ZipFile(built["wheel"]) as archive:
        assert archive.read(index) == (ROOT / index).read_bytes()
    result = _user_python(
        built,
        """
        import contextlib, io, json, sys
        from zoo.cli import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            codes = [main(["list", "dit_t_dtr_*"]), main(["info", "dit_t.digits"])]
        print(json.dumps({"codes": codes, "out": out.getvalue(), "torch": "torch" in sys.modules}))
        """,
    )
    assert result["codes"] == [0, 0] and not result["torch"]
    lines = result["out"].splitlines()
    assert "dit_t_dtr_uw_k5" in lines and "dit_t.digits" in lines
    assert "  parameters 1,274,888 (fixed sin-cos pos_embed included; 1,272,840 trainable)" in lines


def test_console_script_is_declared(built):
    result = _user_python(
        built,
        f"""
        import importlib.metadata, json
        (dist,) = importlib.metadata.distributions(path=[{str(built["site"])!r}])
        scripts = [(e.name, e.value) for e in dist.entry_points if e.group == "console_scripts"]
        main = dict((e.name, e) for e in dist.entry_points if e.group == "console_scripts")["zoo"].load()
        print(json.dumps({{"scripts": scripts, "main": main.__module__ + "." + main.__name__,
                          "file": __import__("zoo.cli").cli.__file__}}))
        """,
    )
    assert result["scripts"] == [["zoo", "zoo.cli:main"]]
    assert result["main"] == "zoo.cli.main"
    assert Path(result["file"]).is_relative_to(built["site"])
    assert (built["site"] / "bin" / "zoo").is_file()  # pip wrote the launcher


def test_user_project_keeps_its_own_models_and_routing(built):
    result = _user_python(
        built,
        """
        import json
        import models, routing
        import zoo, zoo.models, zoo.routing
        model = zoo.create("dit_t.digits", pretrained=True)
        print(json.dumps({
            "models": [models.MINE, models.__file__], "routing": [routing.MINE, routing.__file__],
            "zoo": zoo.__file__, "zoo_path": list(zoo.__path__),
            "zoo.models": zoo.models.__file__, "zoo.routing": zoo.routing.__file__,
            "name": model.config["name"], "sum": float(sum(p.double().sum() for p in model.net.state_dict().values())),
        }))
        """,
    )
    site, user = built["site"], built["user"]
    assert result["models"] == [1, str(user / "models" / "__init__.py")]
    assert result["routing"] == [2, str(user / "routing.py")]
    for key in ("zoo", "zoo.models", "zoo.routing"):
        assert Path(result[key]).is_relative_to(site / "zoo"), (key, result[key])
    assert result["zoo_path"] == [str(site / "zoo")]  # the source-checkout fallback stays off
    assert result["name"] == "dit_t"
    # the weights are the shipped ones (read here from the checkout), not a random init
    from safetensors.torch import load_file

    shipped = load_file(ROOT / "zoo" / "pretrained" / "dit_t.digits" / "model.safetensors")
    expected = float(sum(t.double().sum() for t in shipped.values()))
    assert result["sum"] == pytest.approx(expected, rel=1e-9, abs=1e-9)
