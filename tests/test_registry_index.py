"""`zoo list` and `zoo info` answer from the index of the built-in registries (zoo/registry_index.json) without
importing torch, and the index cannot drift: rebuilt from the live registries it is the committed file, and
every command prints, from the index, exactly what it prints once the live registries answer.

The index is regenerated with `python -m zoo.hub.index` (zoo/hub/index.py says what it holds).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zoo import registry
from zoo.hub.index import differences

ROOT = Path(__file__).resolve().parents[1]
#: loaded by a command that imported more than the index: torch, timm, the parts, the weights registry
HEAVY = (
    "torch",
    "timm",
    "zoo.models",
    "zoo.routing",
    "zoo.mtl",
    "zoo.clustering",
    "zoo.hub",
    "zoo.diffusion",
)

#: commands the index answers: every kind of name part, each (K, objective) it holds, both processes, tags,
#: and names that do not parse (their errors come from the same grammar code)
FAST_COMMANDS = [
    ["list", "*"],
    ["list", "dit_t_*"],
    ["list", "sit_*_k8_*"],
    ["list", "nomatch*"],
    ["list", "--pretrained"],
    ["list", "--pretrained", "dit_t*"],
    ["list", "--pretrained", "*ant*"],
    ["info", "dit_t"],
    ["info", "dit_xl_p8"],
    ["info", "sit_s_p4"],
    ["info", "adm_64"],
    ["info", "adm_t_dtr_famo_k5_timestep"],
    ["info", "dit_l_dtr_nash_k5"],
    ["info", "dit_t_rand_uw_k8_snr"],
    ["info", "dit_b_random_pcgrad_k5_logsnr"],
    ["info", "dit_s_imtl_k8"],
    ["info", "dit_t_linear_p2_k5"],
    ["info", "dit_t_uw_uwc_k8_timestep"],
    ["info", "dit_t_minsnr"],
    ["info", "dit_t_k1_snr"],
    ["info", "sit_xl_uw_k8_logsnr"],
    ["info", "sit_t_dtr_famo_k5_snr"],
    ["info", "sit_b_k1"],
    ["info", "dit_t.digits"],
    ["info", "dit_t_dtr_uw_k5.digits"],
    ["info", "dit_t_p4_dtr.mnist"],
    ["info", "dit_xl.in1k_512"],
    ["info", "dit_l_uw_k5.ant_in1k_256"],
    ["info", "dit_s_nash_k5.ant_in1k_256"],
    ["info", "sit_xl.in1k_256"],
    ["info", "adm_64.in1k"],
    ["info", "--json", "dit_t_dtr_uw_k5.digits"],
    ["info", "--json", "adm_64"],
    ["info", "--json", "sit_xl_uw_k8_logsnr"],
    ["info", "dit_q"],
    ["info", "dit_t_foo"],
    ["info", "dit_t_uw_k05"],
    ["info", "dit_t_k0"],
    ["info", "dit_t_uw_nash_k5"],
    ["info", "dit_t.bad!tag"],
]
#: names the index does not hold: `zoo info` asks zoo.describe (a K it does not hold, an unknown tag, a
#: backbone or objective whose config does not build, a weights folder)
FALLBACK_NAMES = [
    "dit_t_nash_k12",
    "dit_s_k3_timestep",
    "dit_t.nosuchtag",
    "adm_256",
    "adm_256.uncond",
    "dit_t_uw_k5_affinity",
    "./runs/dit_t",
]

# one fresh interpreter: the commands from the index first (no torch), then the index rebuilt from the live
# registries (this imports them), then the same commands again, which the live registries now answer
PARITY_PROBE = """
import contextlib, io, json, sys
from zoo import registry
from zoo.cli import main

def run_all(commands):
    out = []
    for argv in commands:
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(list(argv))
        out.append([code, stdout.getvalue(), stderr.getvalue()])
    return out

commands, fallback_names, heavy = json.loads(sys.argv[1])
fast = run_all(commands)
fallbacks = {name: registry.indexed_description(name) is None for name in fallback_names}
fast_loaded = sorted(m for m in sys.modules if m in heavy or m.startswith(tuple(h + "." for h in heavy)))

from zoo.hub import index
built = index.build_index()
committed = json.loads(registry.INDEX_FILE.read_text(encoding="utf-8"))
live = run_all(commands)
print("PROBE" + json.dumps({"fast": fast, "live": live, "fast_loaded": fast_loaded, "fallbacks": fallbacks,
    "stale": index.differences(built, committed), "text_equal": index.dumps(built) == registry.INDEX_FILE.read_text(encoding="utf-8"),
    "indexed_after_import": registry.indexed_description("dit_t") is not None}))
"""

# one command in a fresh interpreter: its output and what it left imported
COMMAND_PROBE = """
import contextlib, io, json, sys
from zoo.cli import main
stdout = io.StringIO()
with contextlib.redirect_stdout(stdout):
    code = main(sys.argv[2:])
heavy = json.loads(sys.argv[1])
loaded = sorted(m for m in sys.modules if m in heavy or m.startswith(tuple(h + "." for h in heavy)))
print("PROBE" + json.dumps({"code": code, "out": stdout.getvalue(), "loaded": loaded}))
"""


def _python(code: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.rpartition("PROBE")[2])


@pytest.fixture(scope="module")
def parity() -> dict:
    return _python(PARITY_PROBE, json.dumps([FAST_COMMANDS, FALLBACK_NAMES, HEAVY]))


@pytest.mark.parametrize(
    "argv, first_line",
    [
        (["list", "dit_t_*"], "dit_t_dtr"),
        (["list", "--pretrained"], "dit_xl.in1k_256"),
        (["info", "dit_t"], "dit_t"),
    ],
)
def test_list_and_info_import_no_torch(argv, first_line):
    record = _python(COMMAND_PROBE, json.dumps(HEAVY), *argv)
    assert record["code"] == 0
    assert record["loaded"] == []  # neither torch nor timm nor a part nor the weights registry
    assert record["out"].splitlines()[0] == first_line


def test_the_committed_index_is_what_the_live_registries_build(parity):
    assert parity["stale"] == [], (
        f"zoo/registry_index.json is stale: run `python -m zoo.hub.index` ({parity['stale']})"
    )
    assert parity["text_equal"]  # byte for byte what `python -m zoo.hub.index` writes


def test_every_command_prints_from_the_index_what_the_live_registries_print(parity):
    assert parity["fast_loaded"] == []  # the whole first round ran without torch, timm, the parts or zoo.hub
    for argv, fast, live in zip(FAST_COMMANDS, parity["fast"], parity["live"]):
        assert fast == live, f"zoo {' '.join(argv)}: from the index {fast}, from the registries {live}"
    outputs = dict(zip(map(" ".join, FAST_COMMANDS), parity["fast"]))
    # the commands did their work: the whole name space, the weights, the facts, the errors
    names = outputs["list *"][1].splitlines()
    assert outputs["list *"][0] == 0 and names == sorted(set(names))
    assert set(_committed()["names"]["backbones"]) < set(names)
    assert {"dit_l_dtr_nash_k5", "sit_xl_p8_rand_famo_k8_logsnr", "adm_t_uwc"} < set(names)
    assert outputs["list nomatch*"][0] == 1
    assert (
        "  parameters 1,436,960 (fixed sin-cos pos_embed included; 1,404,192 trainable)"
        in outputs["info dit_t"][1]
    )
    assert (
        "  intervals  [(0, 60), (61, 175), (176, 328), (329, 503), (504, 676), (677, 827), (828, 940), (941, 999)]"
        in (outputs["info sit_xl_uw_k8_logsnr"][1])
    )
    assert outputs["info dit_q"][0] == 2
    assert "UnknownModelError: unknown model 'dit_q'. Did you mean: dit_t" in outputs["info dit_q"][2]


def test_names_the_index_does_not_hold_go_to_describe(parity):
    assert parity["fallbacks"] == dict.fromkeys(FALLBACK_NAMES, True)
    assert not parity[
        "indexed_after_import"
    ]  # once zoo.hub is imported, its registry answers (run-time weights)


def _committed() -> dict:
    return json.loads(registry.INDEX_FILE.read_text(encoding="utf-8"))


def test_the_comparison_names_each_stale_entry():
    committed = _committed()
    assert differences(committed, copy.deepcopy(committed)) == []
    stale = copy.deepcopy(committed)
    stale["backbones"]["dit_t"]["parameters"] += 1
    stale["names"]["balancers"].remove("famo")
    stale["pretrained"].pop("dit_t.digits")
    stale["clusters"][next(iter(stale["clusters"]))]["snr"]["8"][0][1] += 1
    section = next(iter(committed["clusters"]))
    assert differences(committed, stale) == [
        "names.balancers",
        "backbones.dit_t.parameters",
        f"clusters.{section}.snr.8.0.1",
        "pretrained.dit_t.digits",
    ]
    reordered = copy.deepcopy(committed)
    reordered["pretrained"] = dict(reversed(list(committed["pretrained"].items())))
    assert differences(committed, reordered) == ["pretrained (order)"]  # the order is what `zoo list` prints
    assert differences({"gflops": 1.0}, {"gflops": 1}) == ["gflops"]


def test_the_index_holds_what_the_module_docstring_says():
    index = _committed()
    assert list(index) == ["about", "names", "backbones", "clusters", "pretrained", "weights"]
    assert set(index["names"]) == set(registry.LIVE_REGISTRIES)
    assert "python -m zoo.hub.index" in index["about"]
    for section, table in index["clusters"].items():
        steps = json.loads(section)["num_timesteps"]
        for objective, by_k in table.items():
            assert objective in index["names"]["objectives"]
            assert sorted(by_k, key=int) == ["1", *map(str, registry.LISTED_K)]
            for k, intervals in by_k.items():  # K contiguous intervals covering 0..T-1
                assert len(intervals) == int(k) and intervals[0][0] == 0 and intervals[-1][1] == steps - 1
                assert all(a[1] + 1 == b[0] for a, b in zip(intervals, intervals[1:]))
