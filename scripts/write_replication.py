"""Fill the generated tables of benchmarks/REPLICATION.md from the committed leaderboard JSON.

    python scripts/write_replication.py           # rewrite the blocks in place
    python scripts/write_replication.py --check   # exit 1 (and name the blocks) if a block is stale

Every number in the tables comes from `benchmarks/results/leaderboard_digits.json` (the converged
protocol: DDIM 50 / Euler 50 steps; for the solver rows, `benchmarks/results/solvers.json`; for the
fast-protocol rows, the earlier board `benchmarks/results/leaderboard_ddim25/leaderboard_digits.json`; for
the MNIST ladder, `benchmarks/results/leaderboard_mnist.json` and `benchmarks/results/mnist_ladder_cfg1.5/`); the prose around them is written by hand and quotes them. A
block is the text between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->`; tests/test_replication.py
runs `--check`, so the tables cannot drift from the JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from zoo.eval import record, stats

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCUMENT = ROOT / "benchmarks" / "REPLICATION.md"
BLOCK = re.compile(
    r"(<!-- generated:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S
)
#: the flow recipe and the DDPM recipe it is compared with (same routing / clustering / MTL part)
FLOW_PAIRS = (("sit_t", "dit_t"), ("sit_t_dtr", "dit_t_dtr"), ("sit_t_nash_k5", "dit_t_nash_k5"))
FLOW_PAIRS += (("sit_t_minsnr", "dit_t_minsnr"),)
#: the earlier digits leaderboard, at the fast protocol (DDIM 25 steps / Heun 12 steps, about 25 NFE), and
#: its first training of the seeds: kept for the table of how FID and rank move with the protocol
FAST_BOARD = "leaderboard_ddim25"
#: the MNIST ladder (issue 19): the MNIST board (guidance 1; the shipped models and every checkpoint of the
#: ladder at 200 samples) and the ladder's guided board (guidance 1.5, each run's last checkpoint, 1,000 samples)
MNIST_BOARD, MNIST_GUIDED = (
    RESULTS / "leaderboard_mnist.json",
    RESULTS / "mnist_ladder_cfg1.5" / "leaderboard_mnist.json",
)


#: the comparisons' metric keys as the tables name them
METRIC_LABELS = {
    "fid_classifier": "FID",
    "fid_inception": "Inception FID",
    "class_accuracy": "class accuracy",
}


def _ms(mean: float | None, std: float | None, digits: int) -> str:
    return record.format_value(mean, std, digits)


def _ci(interval: list[float] | None, digits: int) -> str:
    return "" if not interval else f"[{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def _p(p: float | None) -> str:
    return "" if p is None else (f"{p:.2g}" if p >= 0.001 else f"{p:.1e}")


def _header(*columns: str) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]


def _verdict(verdict: str) -> str:
    return f"**{verdict}**" if verdict in ("better", "worse") else verdict


def _process(recipe: str) -> str:
    return "flow" if recipe.startswith("sit_") else "ddpm"


def _protocol(rows: list[dict[str, Any]]) -> dict[str, str]:
    """process -> 'solver, N steps (NFE n)' read from the rows' own protocol records."""
    out = {}
    for row in rows:
        protocol = row.get("protocol", {})
        process = protocol.get("process") or _process(row.get("recipe") or row["model"].split(".")[0])
        solver = protocol.get("solver") or protocol.get("sampler")
        nfe = protocol.get("nfe", protocol.get("steps"))
        out.setdefault(process, f"{solver}, {protocol.get('steps')} steps ({nfe} NFE)")
    return out


def seeds_table(payload: dict[str, Any]) -> str:
    by_recipe = {row["recipe"]: row for row in payload["seed_summary"]}
    fid = "fid_classifier"
    order = sorted(by_recipe, key=lambda r: (_process(r), by_recipe[r][f"{fid}_mean"]))
    protocol = _protocol(payload["curves"])
    inception = any("fid_inception_mean" in row for row in by_recipe.values())
    columns = ["recipe", "process (solver, NFE)", "seeds", "FID", "FID 95 % CI", "precision", "recall"]
    lines = _header(*columns, "IS", "class accuracy", *(["Inception FID"] if inception else []))
    for recipe in order:
        row = by_recipe[recipe]

        def cell(metric: str, digits: int, row: dict[str, Any] = row) -> str:
            return _ms(row.get(f"{metric}_mean"), row.get(f"{metric}_std"), digits)

        lines.append(
            f"| {recipe} | {_process(recipe)} ({protocol[_process(recipe)]}) | {len(row['seeds'])} "
            f"| {cell(fid, 2)} | {_ci(row.get(f'{fid}_ci95'), 2)} | {cell('precision_classifier', 3)} "
            f"| {cell('recall_classifier', 3)} | {cell('inception_score_classifier', 2)} "
            f"| {cell('class_accuracy', 3)} |" + (f" {cell('fid_inception', 1)} |" if inception else "")
        )
    return "\n".join(lines) + "\n"


def comparisons_table(payload: dict[str, Any]) -> str:
    if not payload.get("comparisons"):
        return "(No comparison yet: no recipe and its plain recipe both have finished runs.)\n"
    lines = _header("recipe", "against", "metric", "difference of means", "paired p", "Welch p", "verdict")
    rows = sorted(payload["comparisons"], key=lambda c: (c["metric"], c.get("process", ""), c["recipe"]))
    for c in rows:
        metric = METRIC_LABELS.get(c["metric"], c["metric"])
        verdict = _verdict(c["verdict"])
        lines.append(
            f"| {c['recipe']} | {c['baseline']} | {metric} | {c['difference']:+.3f} | {_p(c['paired_p'])} "
            f"| {_p(c['welch_p'])} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def flow_table(payload: dict[str, Any]) -> str:
    """Each flow recipe against the DDPM recipe with the same parts (Welch: the seeds do not pair)."""
    lines = _header(
        "flow recipe", "DDPM recipe", "metric", "flow", "DDPM", "difference", "Welch p", "verdict"
    )
    for metric, lower in (("fid", True), ("class_accuracy", False)):
        values = record.final_values(payload["curves"], metric)
        for flow, ddpm in FLOW_PAIRS:
            if flow not in values or ddpm not in values:
                continue
            c = stats.compare(flow, values[flow], ddpm, values[ddpm], metric, lower, paired=False)
            verdict = _verdict(c.verdict)
            label = "FID" if metric == "fid" else "class accuracy"
            digits = 2 if metric == "fid" else 3
            lines.append(
                f"| {flow} | {ddpm} | {label} | {c.recipe_summary.format(digits)} "
                f"| {c.baseline_summary.format(digits)} | {c.difference:+.{digits}f} | {_p(c.welch_p)} | {verdict} |"
            )
    return "\n".join(lines) + "\n"


def steps_table(payload: dict[str, Any]) -> str:
    values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in payload["curves"]:
        values[row["recipe"]][row["step"]].append(record.column(row, "fid"))
    steps = sorted({step for recipe in values.values() for step in recipe})
    lines = ["| recipe | " + " | ".join(f"step {s}" for s in steps) + " |", "|---" * (len(steps) + 1) + "|"]
    for recipe in sorted(values, key=lambda r: (_process(r), r)):
        cells = []
        for step in steps:
            seeds = values[recipe].get(step)
            cells.append(stats.summarize(seeds).format(1) if seeds else "")
        lines.append(f"| {recipe} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def shipped_table(payload: dict[str, Any]) -> str:
    lines = _header(
        "shipped model (seed 0, 500 samples)", "process: solver, steps (NFE)", "FID", "class accuracy"
    )
    rows = sorted(payload["results"], key=lambda r: record.column(r, "fid"))
    for row in rows:
        protocol = row["protocol"]
        process = protocol.get("process") or _process(row["model"])
        solver = protocol.get("solver") or protocol.get("sampler")
        lines.append(
            f"| {row['model']} | {process}: {solver}, {protocol['steps']} ({protocol.get('nfe', protocol['steps'])}) "
            f"| {record.column(row, 'fid'):.2f} | {row['class_accuracy']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def solvers_table(solvers: dict[str, Any]) -> str:
    """FID against NFE, first sampling seed, per model and solver (the solvers benchmark)."""
    cells: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    seed = solvers["protocol"].get("curve_seed", 0)
    for cell in solvers["cells"]:
        if cell["seed"] == seed and cell.get("fid") is not None:
            cells[(cell["model"], cell["solver_label"])][cell["nfe"]] = cell["fid"]
    nfes = sorted({nfe for row in cells.values() for nfe in row})
    lines = [
        "| model | solver | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
        "|---|---" + "|---" * len(nfes) + "|",
    ]
    for (model, label), row in sorted(cells.items()):
        values = " | ".join(f"{row[n]:.2f}" if n in row else "" for n in nfes)
        lines.append(f"| {model} | {label} | {values} |")
    return "\n".join(lines) + "\n"


def protocols_table(fast: dict[str, Any], converged: dict[str, Any]) -> str:
    """Each recipe's FID (mean ± std over its seeds, last step) under the two protocols, with its rank
    among the recipes of its process.

    The two leaderboards' seeds are separate training runs (the converged one retrained them), so the
    columns do not pair: the table shows how FID and the order move with the protocol."""
    summaries = {}
    for name, payload in (("fast", fast), ("converged", converged)):
        summaries[name] = {row["recipe"]: row for row in payload["seed_summary"]}
    recipes = [r for r in summaries["converged"] if r in summaries["fast"]]
    fid = "fid_classifier"
    rank = {}
    for name, table in summaries.items():
        rank[name] = {}
        for process in {_process(r) for r in recipes}:
            mine = sorted(
                (r for r in recipes if _process(r) == process), key=lambda r: table[r][f"{fid}_mean"]
            )
            rank[name].update({r: i + 1 for i, r in enumerate(mine)})
    protocols = {
        name: _protocol(payload["curves"]) for name, payload in (("fast", fast), ("converged", converged))
    }
    lines = _header("recipe", "fast protocol", "FID", "rank", "converged protocol", "FID", "rank")
    for recipe in sorted(recipes, key=lambda r: (_process(r), rank["converged"][r])):
        process = _process(recipe)
        cells = [
            f"{protocols[name].get(process, '?')} | "
            + _ms(summaries[name][recipe][f"{fid}_mean"], summaries[name][recipe][f"{fid}_std"], 2)
            + f" | {rank[name][recipe]}"
            for name in ("fast", "converged")
        ]
        lines.append(f"| {recipe} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def render_blocks() -> dict[str, str]:
    payload = json.loads((RESULTS / "leaderboard_digits.json").read_text())
    solvers = json.loads((RESULTS / "solvers.json").read_text())
    fast = json.loads((RESULTS / FAST_BOARD / "leaderboard_digits.json").read_text())
    ladder, guided = (json.loads(path.read_text()) for path in (MNIST_BOARD, MNIST_GUIDED))
    return {
        "mnist_shipped": shipped_table(ladder),
        "mnist_ladder": seeds_table(ladder),
        "mnist_ladder_comparisons": comparisons_table(ladder),
        "mnist_guided": seeds_table(guided),
        "mnist_guided_comparisons": comparisons_table(guided),
        "seeds": seeds_table(payload),
        "comparisons": comparisons_table(payload),
        "flow_vs_ddpm": flow_table(payload),
        "steps": steps_table(payload),
        "shipped": shipped_table(payload),
        "solvers": solvers_table(solvers),
        "fast_comparisons": comparisons_table(fast),
        "protocols": protocols_table(fast, payload),
    }


def fill(text: str, blocks: dict[str, str]) -> tuple[str, list[str]]:
    """The document with every generated block replaced; and the names of the blocks that changed."""
    changed = []
    found = set()

    def replace(match: re.Match) -> str:
        name = match["name"]
        found.add(name)
        if name not in blocks:
            raise KeyError(
                f"REPLICATION.md names an unknown generated block {name!r}; known: {sorted(blocks)}"
            )
        if match["body"] != blocks[name]:
            changed.append(name)
        return match.group(1) + blocks[name] + match.group(4)

    out = BLOCK.sub(replace, text)
    missing = sorted(set(blocks) - found)
    if missing:
        raise KeyError(f"REPLICATION.md lacks the generated blocks {missing}")
    return out, changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only report stale blocks (exit 1 if any)")
    args = parser.parse_args(argv)
    text = DOCUMENT.read_text()
    out, changed = fill(text, render_blocks())
    if args.check:
        if changed:
            print(f"stale generated blocks in {DOCUMENT.name}: {', '.join(changed)} (run {__file__})")
            return 1
        return 0
    DOCUMENT.write_text(out)
    print(f"wrote {DOCUMENT.relative_to(ROOT)}: {', '.join(changed) or 'no change'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
