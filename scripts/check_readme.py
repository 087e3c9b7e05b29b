"""Run every command and Python snippet of README.md in a fresh temporary directory and record the outcome.

    python scripts/check_readme.py              # the short commands and snippets; long ones recorded as skipped
    python scripts/check_readme.py --all        # also the long ones (training runs, the test suite, benchmarks)
    python scripts/check_readme.py --list       # what would run, with each item's class; runs nothing

Every ```bash line and every ```python block of the README is an item. Bash lines run verbatim with
`bash -c` in one fresh temporary directory (in README order: later commands use what earlier ones
wrote), with `zoo` and `python` on PATH meaning this interpreter and this checkout, `make TARGET` run
against the repository's Makefile with this interpreter (`PY=... STAMP=`), and HF_HUB_OFFLINE=1. A
Python block runs statement by statement in one process. Items the README cannot run here are
recorded as skipped with the reason (RULES: network downloads, placeholder paths, data that is not
shipped, hardware); long ones run only with --all. The record (rc, seconds, output tails, per statement
for Python) goes to benchmarks/results/readme_check.json.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
OUT = ROOT / "benchmarks" / "results" / "readme_check.json"
TAIL = 1500

NETWORK = "skip"
LONG = "long"
#: (pattern, class, reason): the first match classifies an item (a bash line or a Python statement)
RULES: list[tuple[str, str, str]] = [
    (
        r"dit_xl\.in1k|pretrained=\"dit_xl",
        NETWORK,
        "downloads the original DiT-XL/2 weights (Hub; offline here)",
    ),
    (r"hf-hub:org/name", NETWORK, "a placeholder Hub repo"),
    (r"local-dir:path/to/folder", NETWORK, "a placeholder folder"),
    (r"ant_in1k_256\", pretrained=True", NETWORK, "needs ANT's checkpoint, downloaded by hand"),
    (r"^zoo convert DiT-XL-2-256x256\.pt", NETWORK, "needs the original DiT .pt (download, CC BY-NC)"),
    (r"^torchrun --nproc-per-node 8", NETWORK, "needs 8 processes and ImageNet latents (latents:in1k)"),
    (r"^zoo encode imagefolder:data/imagenet", NETWORK, "needs ImageNet and the VAE download"),
    (r"--data latents:latents/in1k", NETWORK, "needs the ImageNet latents of `zoo encode`"),
    (r"imagefolder:data/real|imagefolder:a imagefolder:b", NETWORK, "placeholder image folders"),
    (r"inception:weights-inception", NETWORK, "needs torch-fidelity's Inception .pth (download)"),
    (r"model\(x_t, t, y\)", NETWORK, "placeholder tensors: x_t, t, y are a batch of the user's own loop"),
    (r"checkpoint_path=\"run/final\"", NETWORK, "a placeholder training run"),
    (r"~/Downloads/ant_dit_l_uw", NETWORK, "a placeholder path for ANT's checkpoint (downloaded by hand)"),
    (r"push_to_hub\(\"org/name\"\)", NETWORK, "uploads to the Hub (a placeholder repo)"),
    (r"materialize\(\"cuda\"\)|big = zoo.create", NETWORK, "needs a GPU (and builds DiT-XL)"),
    (
        r"dit_diffusers/|set_diffusers_timestep_shift\(pipe|pipe\(class_labels",
        NETWORK,
        "a placeholder folder of the `zoo convert --to diffusers` line",
    ),
    (r"^zoo convert hf-hub:facebook", NETWORK, "downloads the diffusers DiT-XL/2 (Hub; offline here)"),
    (r"^zoo convert --to diffusers local-dir:runs/x/final", NETWORK, "a placeholder training run"),
    (r"^zoo leaderboard", LONG, "evaluates every matching shipped model on 500 samples (CPU minutes)"),
    (r"^make (test|bench)$", LONG, "the whole test suite / all benchmarks (minutes)"),
    (r"^zoo train .*--steps [0-9]{4,}", LONG, "a full training run (CPU minutes to hours)"),
    (r"runs/digits/final|npz:samples\.npz", LONG, "uses the output of the README's digits training run"),
]


@dataclass
class Item:
    kind: str  # bash | python
    line: int  # README line of the command / the block's first line
    text: str
    cls: str = "short"  # short | long | skip
    reason: str = ""
    statements: list[dict] = field(default_factory=list)


def classify(text: str) -> tuple[str, str]:
    for pattern, cls, reason in RULES:
        if re.search(pattern, text, re.M):
            return cls, reason
    return "short", ""


def parse_readme(text: str) -> list[Item]:
    """The bash lines and Python blocks of a Markdown text, in order."""
    items: list[Item] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        fence = re.fullmatch(r"```(\w+)\s*", lines[index])
        if not fence:
            index += 1
            continue
        language, start = fence.group(1), index + 1
        end = next(j for j in range(start, len(lines)) if lines[j].startswith("```"))
        body = lines[start:end]
        if language == "bash":
            for offset, raw in enumerate(body):
                command = re.sub(r"\s+#\s.*$", "", raw).strip()
                if command and not command.startswith("#"):
                    items.append(Item("bash", start + offset + 1, command, *classify(command)))
        elif language == "python":
            source = "\n".join(body) + "\n"
            item = Item("python", start + 1, source)
            for node in ast.parse(source).body:
                statement = ast.get_source_segment(source, node)
                cls, reason = classify(statement)
                item.statements.append(
                    {"line": start + node.lineno, "code": statement, "class": cls, "reason": reason}
                )
            item.cls = "long" if any(s["class"] == LONG for s in item.statements) else "short"
            items.append(item)
        index = end + 1
    return items


def _environment(bin_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
        PATH=str(bin_dir) + os.pathsep + env.get("PATH", ""),
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"),
        MPLBACKEND="Agg",
    )
    return env


def _wrappers(bin_dir: Path) -> None:
    """`zoo` and `python` on PATH: this interpreter with this checkout."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in (
        ("zoo", f'exec "{sys.executable}" -m zoo "$@"'),
        ("python", f'exec "{sys.executable}" "$@"'),
    ):
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)


def shell_command(command: str) -> str:
    """What runs for a README bash line (make targets use the repository's Makefile and this interpreter)."""
    make = re.fullmatch(r"make (\w+)", command)
    if make:
        target = make.group(1)
        where = f"-C {ROOT}" if target in ("test", "bench", "lint") else f"-f {ROOT / 'Makefile'}"
        return f"make {where} PY={sys.executable} STAMP= {target}"
    return command


_DRIVER = r"""
import json, sys, time, traceback, io, contextlib
statements = json.loads(sys.stdin.read())
namespace = {"__name__": "__readme__"}
results = []
for item in statements:
    if item["skip"]:
        results.append({"line": item["line"], "status": "skipped", "reason": item["reason"]})
        continue
    start = time.perf_counter()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(item["code"], f"README.md:{item['line']}", "exec"), namespace)
        status, error = "passed", ""
    except BaseException:
        status, error = "failed", traceback.format_exc()[-1500:]
    results.append({"line": item["line"], "status": status, "time_s": round(time.perf_counter() - start, 2),
                    "stdout_tail": out.getvalue()[-600:], "error": error})
print("READMECHECK" + json.dumps(results))
"""


def run_item(item: Item, cwd: Path, env: dict[str, str], run_long: bool, timeout: float) -> dict:
    record = {k: v for k, v in asdict(item).items() if k != "statements"}
    if item.cls == NETWORK:
        return {**record, "status": "skipped"}
    if item.cls == LONG and not run_long:
        return {**record, "status": "skipped", "reason": f"long ({item.reason}); runs with --all"}
    start = time.perf_counter()
    if item.kind == "bash":
        ran = shell_command(item.text)
        try:
            proc = subprocess.run(
                ["bash", "-c", ran], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
            )
            rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, stdout, stderr = 124, str(exc.stdout or ""), f"timed out after {timeout} s"
        return {
            **record,
            "ran": ran,
            "status": "passed" if rc == 0 else "failed",
            "rc": rc,
            "time_s": round(time.perf_counter() - start, 2),
            "stdout_tail": stdout[-TAIL:],
            "stderr_tail": stderr[-TAIL:],
        }
    statements = [
        {
            "line": s["line"],
            "code": s["code"],
            "skip": s["class"] == NETWORK or (s["class"] == LONG and not run_long),
            "reason": s["reason"],
        }
        for s in item.statements
    ]
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER],
        input=json.dumps(statements),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    marker = proc.stdout.rfind("READMECHECK")
    results = json.loads(proc.stdout[marker + len("READMECHECK") :]) if marker >= 0 else []
    for result, statement in zip(results, item.statements):
        result["code"] = statement["code"]
    failed = proc.returncode != 0 or any(r["status"] == "failed" for r in results)
    return {
        **record,
        "status": "failed" if failed else "passed",
        "rc": proc.returncode,
        "time_s": round(time.perf_counter() - start, 2),
        "statements": results,
        "stderr_tail": proc.stderr[-TAIL:],
    }


def check(
    run_long: bool = False, readme: Path = README, timeout: float = 900.0, only: str | None = None
) -> dict:
    text = readme.read_text()
    items = parse_readme(text)
    records = []
    with tempfile.TemporaryDirectory(prefix="readme-check-") as tmp:
        tmp_path = Path(tmp)
        _wrappers(tmp_path / ".bin")
        env = _environment(tmp_path / ".bin")
        work = tmp_path / "work"
        work.mkdir()
        for item in items:
            if only and not re.search(only, item.text):
                records.append({**asdict(item), "status": "not selected"})
                continue
            record = run_item(item, work, env, run_long, timeout if item.cls != LONG else 4 * 3600)
            records.append(record)
            print(
                f"{record['status']:>8}  {record.get('time_s', 0):>7}s  README.md:{item.line}  {item.text.splitlines()[0][:90]}",
                flush=True,
            )
    counts: dict[str, int] = {}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    return {
        "readme_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "command": "python scripts/check_readme.py"
        + (" --all" if run_long else "")
        + (f" --only {only!r}" if only else ""),
        "env": {"HF_HUB_OFFLINE": "1", "python": sys.executable, "cwd": "a fresh temporary directory"},
        "counts": counts,
        "items": records,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=type(
            "Formatter", (argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter), {}
        ),
    )
    parser.add_argument("--all", action="store_true", help="also run the long items")
    parser.add_argument("--list", action="store_true", help="print the items and their class; run nothing")
    parser.add_argument(
        "--only", default=None, help="run only items matching this regex (others: not selected)"
    )
    parser.add_argument("--json", default=str(OUT), help="where to write the record ('' for nowhere)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per short item")
    args = parser.parse_args(argv)
    if args.list:
        for item in parse_readme(README.read_text()):
            print(f"{item.cls:>5}  README.md:{item.line}  {item.text.splitlines()[0][:90]}  {item.reason}")
        return 0
    payload = check(run_long=args.all, timeout=args.timeout, only=args.only)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json}: {payload['counts']}")
    return 1 if payload["counts"].get("failed") else 0


if __name__ == "__main__":
    raise SystemExit(main())
