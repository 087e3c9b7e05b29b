"""The command line is one module per command and loads only what the command it runs needs: `zoo --help`
imports no command module and no torch; `zoo CMD` imports CMD's module and no other command's."""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zoo import cli

ROOT = Path(__file__).resolve().parents[1]

# run in a fresh interpreter: the zoo.cli modules and torch this process has imported are not counted
PROBE = """
import json, sys
from zoo.cli import main
code = None
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith(("zoo.cli.", "zoo.train", "zoo.hub")))
print("PROBE" + json.dumps({"code": code, "loaded": loaded}))
"""


def _probe(*argv: str) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    help_text, _, record = proc.stdout.rpartition("PROBE")
    return json.loads(record), help_text


def test_help_imports_no_command_module_and_no_torch_and_lists_every_command():
    record, text = _probe("--help")
    assert record["code"] == 0
    assert record["loaded"] == []  # neither torch, nor zoo.hub / zoo.train, nor any command module
    listed = {line.split()[0] for line in text.splitlines() if line[:4] == "    " and line[4:5].strip()}
    assert listed == set(cli.COMMANDS)
    for name, line in cli.HELP.items():
        assert f"{name} {line}" in " ".join(text.split())


def test_a_command_loads_its_own_module_only():
    record, text = _probe("routing", "--help")
    assert record["code"] == 0 and text.startswith("usage: zoo routing")
    assert [m for m in record["loaded"] if m.startswith("zoo.cli.")] == ["zoo.cli.routing"]
    assert not any(m.startswith(("zoo.train", "zoo.hub")) for m in record["loaded"])


def test_the_table_covers_every_command_module():
    modules = {p.stem for p in (ROOT / "zoo/cli").glob("*.py")} - {"__init__", "__main__"}
    assert {name.rsplit(".", 1)[1] for name in cli.COMMANDS.values()} == modules
    assert list(cli.HELP) == list(cli.COMMANDS)


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_module_follows_the_convention(name):
    module = importlib.import_module(cli.COMMANDS[name])
    assert module.HELP == cli.HELP[name] and "\n" not in module.HELP
    assert callable(module.add_arguments) and callable(module.run)
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    assert len(parser._actions) > 1  # it added arguments besides --help


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_help_exits_zero(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: zoo {name} ")


def test_build_parser_without_argv_is_complete():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(cli.COMMANDS)
    for name, subparser in sub.choices.items():
        assert subparser.get_default("func") is importlib.import_module(cli.COMMANDS[name]).run
    args = parser.parse_args(["routing", "--kind", "random", "--channels", "8"])
    assert (args.kind, args.channels, args.alpha) == ("random", 8, 4.0)


def test_a_lazily_listed_command_has_no_arguments_until_named():
    parser = cli.build_parser(["list"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sub.choices["list"].get_default("func") is importlib.import_module("zoo.cli.list_").run
    assert sub.choices["train"].get_default("func") is None
    assert [a.dest for a in sub.choices["train"]._actions] == ["help"]


def test_no_project_import_inside_a_function():
    offenders = []
    for path in sorted((ROOT / "zoo/cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom):
                    names = [inner.module or ""] if inner.level == 0 else ["zoo"]
                elif isinstance(inner, ast.Import):
                    names = [alias.name for alias in inner.names]
                else:
                    continue
                if any(n == "zoo" or n.startswith("zoo.") for n in names):
                    offenders.append(f"{path.name}:{inner.lineno}")
    assert offenders == []
