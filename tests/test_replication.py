"""benchmarks/REPLICATION.md's tables are the committed JSON's numbers (scripts/write_replication.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("write_replication", ROOT / "scripts" / "write_replication.py")
write_replication = importlib.util.module_from_spec(spec)
spec.loader.exec_module(write_replication)


def test_the_generated_tables_equal_the_json():
    text = write_replication.DOCUMENT.read_text()
    filled, changed = write_replication.fill(text, write_replication.render_blocks())
    assert changed == [], f"stale blocks {changed}: run python scripts/write_replication.py"
    assert filled == text


def test_a_changed_number_is_caught_and_every_block_is_required():
    blocks = write_replication.render_blocks()
    text = write_replication.DOCUMENT.read_text()
    seeds = blocks["seeds"]
    line = next(row for row in seeds.splitlines() if row.startswith("| dit_t |"))
    fid_cell = line.split(" | ")[3]  # recipe | process | seeds | FID | ...
    tampered = text.replace(line, line.replace(fid_cell, "0.00 ± 0.00"), 1)
    assert tampered != text
    _, changed = write_replication.fill(tampered, blocks)
    assert changed == ["seeds"]
    without = text.replace("<!-- generated:steps -->", "").replace("<!-- /generated:steps -->", "")
    with pytest.raises(KeyError, match="steps"):
        write_replication.fill(without, blocks)


def test_the_tables_read_the_statistics_the_leaderboard_computed():
    """The seeds table's FID cell of plain dit_t is the JSON's mean ± std; the flow table uses Welch only."""
    payload = write_replication.json.loads(
        (write_replication.RESULTS / "leaderboard_digits.json").read_text()
    )
    plain = next(row for row in payload["seed_summary"] if row["recipe"] == "dit_t")
    expected = f"{plain['fid_classifier_mean']:.2f} ± {plain['fid_classifier_std']:.2f}"
    assert expected in write_replication.seeds_table(payload)
    flow = write_replication.flow_table(payload)
    row = next(r for r in flow.splitlines() if r.startswith("| sit_t | dit_t | FID"))
    welch = write_replication.stats.welch_p(
        list(write_replication.record.final_values(payload["curves"], "fid")["sit_t"].values()),
        list(write_replication.record.final_values(payload["curves"], "fid")["dit_t"].values()),
    )
    assert f"| {write_replication._p(welch)} |" in row


def test_the_protocols_table_ranks_each_process_apart_and_names_its_solvers():
    fast = write_replication.json.loads(
        (write_replication.RESULTS / write_replication.FAST_BOARD / "leaderboard_digits.json").read_text()
    )
    converged = write_replication.json.loads(
        (write_replication.RESULTS / "leaderboard_digits.json").read_text()
    )
    rows = [line.split(" | ") for line in write_replication.protocols_table(fast, converged).splitlines()[2:]]
    by_process: dict[str, list[list[str]]] = {}
    for row in rows:
        by_process.setdefault(write_replication._process(row[0].lstrip("| ")), []).append(row)
    assert set(by_process) == {"ddpm", "flow"}
    for mine in by_process.values():
        for column in (3, 6):  # the ranks under each protocol: 1..n within the process
            assert sorted(int(r[column].rstrip(" |")) for r in mine) == list(range(1, len(mine) + 1))
        converged_fids = [float(r[5].split(" ± ")[0]) for r in mine]
        assert converged_fids == sorted(converged_fids)  # listed in the converged order
    assert {r[1] for r in by_process["ddpm"]} == {"ddim, 25 steps (25 NFE)"}
    assert {r[4] for r in by_process["ddpm"]} == {"ddim, 50 steps (50 NFE)"}
    assert {r[4] for r in by_process["flow"]} == {"euler, 50 steps (50 NFE)"}
