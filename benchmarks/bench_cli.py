"""Start-up cost of the command line: `zoo --help`, `zoo list dit_t_*`, `zoo list --pretrained`, `zoo info dit_t`
as fresh processes.

Each command runs as `python -m zoo ...` in a subprocess (HF_HUB_OFFLINE=1, one torch thread),
interleaved (A B C A B C ...) after one warm-up round; the median wall time and the median CPU time
of the child (user + system, which the machine's other jobs disturb less) are reported. A separate
run of each command through `zoo.cli.main` counts the modules it leaves in `sys.modules` and says
whether torch is among them. Issue 16's target: `zoo --help`, `zoo list` and `zoo info` under 1.5 s
(`list` and `info` read the registries' index, zoo/registry_index.json, and import no torch).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import report

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "help": ["--help"],
    "list": ["list", "dit_t_*"],
    "list_pretrained": ["list", "--pretrained"],
    "info": ["info", "dit_t"],
}
TARGET_S = dict.fromkeys(COMMANDS, 1.5)

# what a command leaves imported, counted in a fresh interpreter
PROBE = """
import json, sys
from zoo.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("PROBE" + json.dumps({"modules": len(sys.modules), "torch": "torch" in sys.modules,
    "zoo": sorted(m for m in sys.modules if m == "zoo" or m.startswith("zoo."))}))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run_once(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one `python -m zoo ARGV`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "zoo", *argv], cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"zoo {' '.join(argv)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _probe(argv: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    return json.loads(proc.stdout.rpartition("PROBE")[2])


def run(quick: bool = False) -> dict:
    repeats = 3 if quick else 5
    walls: dict[str, list[float]] = {name: [] for name in COMMANDS}
    cpus: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for round_ in range(1 + repeats):  # round 0 warms the file cache (.pyc, shared libraries)
        for name, argv in COMMANDS.items():
            wall, cpu = _run_once(argv)
            if round_:
                walls[name].append(wall)
                cpus[name].append(cpu)
    rows = []
    for name, argv in COMMANDS.items():
        probe = _probe(argv)
        wall = statistics.median(walls[name])
        target = TARGET_S.get(name)
        rows.append(
            {
                "command": "python -m zoo " + " ".join(argv),
                "wall_s": round(wall, 3),
                "wall_min_s": round(min(walls[name]), 3),
                "wall_max_s": round(max(walls[name]), 3),
                "cpu_s": round(statistics.median(cpus[name]), 3),
                "modules": probe["modules"],
                "zoo_modules": len(probe["zoo"]),
                "torch": probe["torch"],
                "target_s": target if target is not None else "",
                "meets_target": "" if target is None else ("yes" if wall < target else "no"),
            }
        )
    help_probe = _probe(COMMANDS["help"])
    return report(
        "cli",
        f"zoo start-up: median of {repeats} interleaved subprocess runs (HF_HUB_OFFLINE=1)",
        rows,
        command="python -m benchmarks cli" + (" --quick" if quick else ""),
        repeats=repeats,
        help_zoo_modules=help_probe["zoo"],
        load_average=os.getloadavg(),
    )


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
