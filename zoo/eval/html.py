"""`zoo leaderboard --html`: the leaderboard as ONE self-contained web page (no network at all).

Images are inlined as data: URIs and the small sort script and style sheet are in the page, so the file
opens anywhere, offline. It shows the table of shipped models (click a header to sort; numbers sort as
numbers) with each row's process and solver, the statistics over training seeds with the tests against
the plain training of the same process (zoo.eval.record, zoo.eval.stats), the protocol of each process
(one column per process), each model's sample grid, FID against training step and, when a solvers
benchmark is present beside the JSON (solvers*.png), FID against NFE, with relative links to the model
cards (zoo/pretrained/<name>/README.md).

`render_page` works from a leaderboard payload alone (what `zoo leaderboard` writes as JSON), so
`zoo leaderboard --html --from-json benchmarks/results/leaderboard_digits.json` renders the page of a
finished run without sampling. `headless_chromium` and `screenshot` drive Debian's Chromium through
selenium (the browser test and the committed screenshot).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

from zoo.eval import metrics as evaluate
from zoo.eval import record
from zoo.eval.leaderboard import (
    DEFAULT_OUT,
    inception_records,
    plot_curves,
    read_leaderboard_json,
    render_markdown,
    rows_by_process,
    single_step,
    summarize_seeds,
)
from zoo.eval.metrics import KID_SUBSET_SIZE
from zoo.hub import PACKAGE_WEIGHTS

#: the model-table columns: (metric, header, lower is better)
TABLE_METRICS = (
    ("fid", "FID (classifier)", True),
    ("kid", "KID (classifier)", True),
    ("precision", "precision (classifier)", False),
    ("recall", "recall (classifier)", False),
    ("inception_score", "IS (classifier)", False),
    ("class_accuracy", "class accuracy", False),
)
#: the model-table columns of the FID Inception's metrics (`zoo leaderboard --inception N`), where rows carry them
INCEPTION_TABLE_METRICS = (
    ("fid_inception", "FID (Inception)", True),
    ("kid_inception", "KID (Inception)", True),
)
#: protocol fields written since issue 19; an older JSON shows them as not recorded
EXPECTED_PROTOCOL = (
    "process",
    "solver",
    "sampler",
    "steps",
    "nfe",
    "guidance",
    "eta",
    "x0_clipping",
    "label_scheme",
    "num_samples",
    "reference",
    "reference_size",
    "extractor",
    "extractor_sha256",
    "kid_subsets",
    "kid_subset_size",
    "seed",
    "package_version",
    "git_commit",
)
CHROMIUM = ("chromium", "chromium-browser")
CHROMEDRIVER = ("chromedriver",)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1400px; color: #1b1b1b;
       padding: 0 1rem; line-height: 1.4; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.8rem; margin: 0.5rem 0; }
th, td { border: 1px solid #d0d0d0; padding: 0.2rem 0.4rem; text-align: right; white-space: nowrap; }
thead th { white-space: normal; vertical-align: bottom; max-width: 9rem; }
.wide { overflow-x: auto; }
td.text, th.text { text-align: left; }
thead th { background: #f1f3f5; }
table.sortable thead th { cursor: pointer; user-select: none; }
table.sortable thead th::after { content: " \\2195"; color: #999; }
table.sortable thead th[aria-sort="ascending"]::after { content: " \\2191"; color: #000; }
table.sortable thead th[aria-sort="descending"]::after { content: " \\2193"; color: #000; }
tbody tr:nth-child(even) { background: #fafafa; }
.better { color: #176b1f; font-weight: 600; } .worse { color: #a31515; font-weight: 600; }
.muted { color: #666; font-size: 0.85rem; }
.grids { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; } figcaption { font-size: 0.8rem; text-align: center; }
figure img.grid { image-rendering: pixelated; width: 240px; border: 1px solid #ccc; }
img.plot { max-width: 100%; border: 1px solid #eee; }
code { font-size: 0.8rem; }
"""

_SCRIPT = """
"use strict";
function sortKey(row, index, numeric) {
  const cell = row.cells[index];
  const raw = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim();
  if (!numeric) return raw.toLowerCase();
  const value = parseFloat(raw);
  return Number.isNaN(value) ? null : value;
}
function sortTable(table, index) {
  const header = table.tHead.rows[0].cells[index];
  const numeric = header.dataset.type === "number";
  const ascending = header.getAttribute("aria-sort") !== "ascending";
  for (const cell of table.tHead.rows[0].cells) cell.removeAttribute("aria-sort");
  header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = sortKey(a, index, numeric), y = sortKey(b, index, numeric);
    if (x === null || y === null) return (x === null) - (y === null);  // blanks last, both ways
    const order = x < y ? -1 : x > y ? 1 : 0;
    return ascending ? order : -order;
  });
  for (const row of rows) body.appendChild(row);
}
for (const table of document.querySelectorAll("table.sortable")) {
  Array.from(table.tHead.rows[0].cells).forEach((cell, index) => {
    cell.addEventListener("click", () => sortTable(table, index));
  });
}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _number(value: float | None, digits: int = 4) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _cell(value: float | None, text: str | None = None, cls: str = "") -> str:
    """A numeric cell: the sort key in data-value, the shown text (with its uncertainty) inside."""
    key = "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))
    shown = _number(value) if text is None else text
    attr = f' class="{cls}"' if cls else ""
    return f'<td data-value="{_e(key)}"{attr}>{_e(shown)}</td>'


def _p(value: float | None) -> str:
    return "" if value is None else (f"{value:.3g}" if value >= 0.001 else f"{value:.1e}")


def card_link(name: str, page_dir: Path) -> str | None:
    """The relative link from the page's folder to a shipped model's card, when the card exists."""
    card = PACKAGE_WEIGHTS / name / "README.md"
    if not card.is_file():
        return None
    try:
        return Path(os.path.relpath(card.resolve(), page_dir.resolve())).as_posix()
    except ValueError:  # another drive (Windows): an absolute file link, still no network
        return card.resolve().as_uri()


def _recipe(model: str) -> str:
    return model.split(".")[0].split("@")[0]


def _curve_plot(payload: dict[str, Any], assets: Path | None) -> bytes | None:
    """FID against training step: drawn from the JSON's curves (or the PNG beside it)."""
    if payload.get("curves"):
        buffer = io.BytesIO()
        plot_curves(payload["curves"], buffer, payload["settings"]["data"])
        return buffer.getvalue()
    if assets is not None:
        path = assets / f"leaderboard_{payload['settings']['data']}_fid_vs_step.png"
        if path.is_file():
            return path.read_bytes()
    return None


def solver_plots(assets: Path | None, data: str) -> list[Path]:
    """FID-against-NFE plots of the solvers benchmark beside the JSON (solvers*.png), this data's first."""
    if assets is None:
        return []
    found = sorted(assets.glob("solvers*.png"))
    mine = [p for p in found if data in p.stem]
    others = ("digits", "mnist")
    return mine or [p for p in found if not any(o in p.stem for o in others)]


def _derived_protocol(shared: dict[str, Any], settings: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """For JSON written before the full record: the fields that follow from what it did record."""
    out: dict[str, tuple[Any, str]] = {}
    if "sampler" in shared:
        out["solver"] = (shared["sampler"], "the recorded sampler")
    if "steps" in shared:
        out["nfe"] = (shared["steps"], "one network call per step")
    if "kid_subsets" in settings:
        out["kid_subsets"] = (settings["kid_subsets"], "the recorded settings")
    match = re.search(r"\((\d+) images\)", str(shared.get("reference", "")))
    if match:
        out["reference_size"] = (int(match.group(1)), "from the reference's name")
        if "num_samples" in shared:
            size = min(KID_SUBSET_SIZE, int(match.group(1)), int(shared["num_samples"]))
            out["kid_subset_size"] = (size, "min(1000, reference, samples) as zoo.eval.metrics.kid draws")
    return out


def _protocol_cell(key: str, shared: dict[str, Any], varying: list[str], derived: dict) -> str:
    if key in shared:
        return f"<code>{_e(shared[key])}</code>"
    if key in varying:
        return '<span class="muted">differs between rows, or only some record it (see the JSON)</span>'
    if key in derived:
        value, why = derived[key]
        return f'<code>{_e(value)}</code> <span class="muted">(not recorded; {_e(why)})</span>'
    return '<span class="muted">not recorded (JSON written before this field)</span>'


def _protocol_section(
    rows: list[dict[str, Any]], settings: dict[str, Any], table_id: str = "protocol"
) -> str:
    """The protocol of each process: one column per process, one row per field (fields an old JSON did
    not record are derived from the leaderboard's `settings` where they can be)."""
    groups = rows_by_process(rows)
    columns = []
    for process, group in groups.items():
        shared, varying = record.shared_protocol(group)
        columns.append((process, len(group), shared, varying, _derived_protocol(shared, settings)))
    extra = [k for _, _, shared, varying, _ in columns for k in [*shared, *varying]]
    keys = list(dict.fromkeys([*EXPECTED_PROTOCOL, *extra]))
    heads = "".join(f'<th class="text">{_e(p)} ({n} rows)</th>' for p, n, *_ in columns)
    lines = [f'<table id="{table_id}"><thead><tr><th class="text">field</th>{heads}</tr></thead><tbody>']
    for key in keys:
        cells = "".join(
            f'<td class="text">{_protocol_cell(key, shared, varying, derived)}</td>'
            for _, _, shared, varying, derived in columns
        )
        lines.append(f'<tr><th class="text">{_e(key)}</th>{cells}</tr>')
    lines.append("</tbody></table>")
    return "\n".join(lines)


def table_metrics(rows: list[dict[str, Any]]) -> tuple[tuple[str, str, bool], ...]:
    """The model table's metric columns: the classifier's, and Inception's where any row carries them."""
    inception = tuple(m for m in INCEPTION_TABLE_METRICS if any(m[0] in r for r in rows))
    return (*TABLE_METRICS, *inception)


def _inception_section(rows: list[dict[str, Any]], table_id: str = "inception-protocol") -> list[str]:
    """The record of the Inception metrics (absent without them)."""
    count, shared, varying = inception_records(rows)
    if not count:
        return []
    lines = [
        f'<p class="muted">Inception columns ({count} rows): the same samples in the FID '
        "Inception-v3's features (what <code>zoo fid</code> computes).</p>",
        f'<table id="{table_id}"><tbody>',
    ]
    for key, value in shared.items():
        lines.append(
            f'<tr><th class="text">{_e(key)}</th><td class="text"><code>{_e(value)}</code></td></tr>'
        )
    for key in varying:
        lines.append(
            f'<tr><th class="text">{_e(key)}</th><td class="text muted">differs between rows</td></tr>'
        )
    lines.append("</tbody></table>")
    return lines


def _models_table(
    rows: list[dict[str, Any]], summary: dict[str, dict[str, Any]], tests: dict, page_dir: Path
) -> str:
    heads = ['<th class="text" data-type="text">model</th>']
    heads += ['<th class="text" data-type="text">process: solver, steps (NFE)</th>']
    metrics = table_metrics(rows)
    heads += [f'<th data-type="number">{_e(label)}</th>' for _, label, _ in metrics]
    heads += [
        '<th data-type="number">FID of the recipe over training seeds (mean ± std)</th>',
        '<th data-type="number">paired p vs plain (FID)</th>',
        '<th class="text" data-type="text">verdict (FID)</th>',
        '<th class="text" data-type="text">weights sha256</th>',
    ]
    body = []
    for row in sorted(rows, key=lambda r: record.column(r, "fid")):
        name = row["model"]
        link = card_link(name, page_dir)
        label = f'<a href="{_e(link)}">{_e(name)}</a>' if link else _e(name)
        cells = [f'<td class="text" data-value="{_e(name)}">{label}</td>']
        protocol = row["protocol"]
        solver = protocol.get("solver") or protocol.get("sampler")
        nfe = f" ({protocol['nfe']} NFE)" if "nfe" in protocol else ""
        cells.append(
            f'<td class="text">{_e(record.row_process(row))}: {_e(solver)}, {_e(protocol["steps"])}{_e(nfe)}</td>'
        )
        for metric, _, _ in metrics:
            value = record.column(row, metric)
            if metric in ("kid", "kid_inception"):
                spread = record.column(row, "kid_std" if metric == "kid" else "kid_std_inception")
                cells.append(_cell(value, record.format_value(value, spread)))
            else:
                cells.append(_cell(value))
        entry = summary.get(_recipe(name))
        if entry:
            key = record.feature_key("fid") if f"{record.feature_key('fid')}_mean" in entry else "fid"
            mean, std = entry[f"{key}_mean"], entry.get(f"{key}_std")
            cells.append(_cell(mean, record.format_value(mean, std) + f" (n={len(entry['seeds'])})"))
        else:
            cells.append(_cell(None, ""))
        test = tests.get(_recipe(name))
        if test:
            cells.append(_cell(test["paired_p"], _p(test["paired_p"])))
            verdict = test["verdict"]
            cls = verdict if verdict in ("better", "worse") else ""
            cells.append(f'<td class="text {cls}">{_e(verdict)}</td>')
        else:
            cells.append(_cell(None, ""))
            cells.append('<td class="text">plain (baseline)</td>' if entry else '<td class="text"></td>')
        sha = row["protocol"]["weights_sha256"]
        cells.append(f'<td class="text"><code title="{_e(sha)}">{_e(sha[:12])}</code></td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        '<div class="wide"><table id="models" class="sortable"><thead><tr>'
        + "".join(heads)
        + "</tr></thead><tbody>\n"
        + "\n".join(body)
        + "\n</tbody></table></div>"
    )


def _means(entry: dict[str, Any]) -> dict[str, Any]:
    """A seed-summary entry's means under the metric keys (for record.column)."""
    return {key[: -len("_mean")]: value for key, value in entry.items() if key.endswith("_mean")}


def _seeds_table(summary: list[dict[str, Any]], tests: dict[str, dict[str, Any]]) -> str:
    shown = (("fid", "FID"), ("kid", "KID"), ("precision", "precision"), ("class_accuracy", "class acc"))
    if any("fid_inception_mean" in e for e in summary):
        shown += (("fid_inception", "FID (Inception)"),)
    heads = ['<th class="text" data-type="text">recipe</th>', '<th data-type="number">step</th>']
    heads += ['<th data-type="number">seeds</th>']
    for _, label in shown:
        heads.append(f'<th data-type="number">{_e(label)} mean ± std</th>')
    heads += [
        '<th data-type="number">FID 95 % CI (t)</th>',
        '<th data-type="number">Δ FID vs plain</th>',
        '<th data-type="number">paired p</th>',
        '<th data-type="number">Welch p</th>',
        '<th class="text" data-type="text">verdict</th>',
    ]
    body = []
    for entry in sorted(summary, key=lambda e: record.column(_means(e), "fid") or math.inf):

        def key(metric: str, entry: dict[str, Any] = entry) -> str:
            new = record.feature_key(metric)
            return new if f"{new}_mean" in entry else metric

        cells = [
            f'<td class="text">{_e(entry["recipe"])}</td>',
            _cell(entry["step"], str(entry["step"])),
            _cell(len(entry["seeds"]), str(len(entry["seeds"]))),
        ]
        for metric, _ in shown:
            mean, std = entry.get(f"{key(metric)}_mean"), entry.get(f"{key(metric)}_std")
            cells.append(_cell(mean, record.format_value(mean, std)))
        ci = entry.get(f"{key('fid')}_ci95")
        cells.append(_cell(ci[0] if ci else None, f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
        test = tests.get(entry["recipe"])
        if test:
            cells += [
                _cell(test["difference"], f"{test['difference']:+.3f}"),
                _cell(test["paired_p"], _p(test["paired_p"])),
                _cell(test["welch_p"], _p(test["welch_p"])),
            ]
            cls = test["verdict"] if test["verdict"] in ("better", "worse") else ""
            cells.append(f'<td class="text {cls}">{_e(test["verdict"])}</td>')
        else:
            cells += [_cell(None, ""), _cell(None, ""), _cell(None, ""), '<td class="text">baseline</td>']
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        '<div class="wide"><table id="seeds" class="sortable"><thead><tr>'
        + "".join(heads)
        + "</tr></thead><tbody>\n"
        + "\n".join(body)
        + "\n</tbody></table></div>"
    )


def _claims(comparisons: list[dict[str, Any]]) -> list[str]:
    """The claims, per metric, each worded at the strength of its test."""
    out = ['<div id="claims">']
    for metric in dict.fromkeys(c["metric"] for c in comparisons):
        out.append(f"<h3>Claims on {_e(metric)}</h3><ul>")
        for c in comparisons:
            if c["metric"] == metric:
                cls = c["verdict"] if c["verdict"] in ("better", "worse") else ""
                out.append(
                    f'<li class="{cls}">{_e(c["claim"])}</li>' if cls else f"<li>{_e(c['claim'])}</li>"
                )
        out.append("</ul>")
    out.append("</div>")
    return out


def render_page(
    payload: dict[str, Any], assets: Path | None = None, page_dir: Path | None = None, source: str = ""
) -> str:
    """The page as one HTML string. `assets`: the folder holding samples_<model>.png (and solvers*.png);
    `page_dir`: where the page will live (for the relative card links)."""
    assets = Path(assets) if assets is not None else None
    page_dir = Path(page_dir) if page_dir is not None else (assets or Path.cwd())
    data = payload["settings"]["data"]
    rows = [r for r in payload["results"] if evaluate.has_protocol(r)]
    curves = payload.get("curves") or []
    summary = summarize_seeds(curves) if curves else []
    comparisons = record.comparisons(curves) if curves else []
    fid_tests = {c["recipe"]: c for c in comparisons if c["metric"] == record.feature_key("fid")}
    plain = ", ".join(f"<code>{_e(b)}</code> for {_e(p)}" for p, b in record.baselines(comparisons).items())
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Leaderboard: {_e(data)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Leaderboard: {_e(data)}</h1>",
        f'<p class="muted">{len(rows)} shipped models under one protocol (one solver per process)'
        + (f"; statistics over {len(curves)} per-seed checkpoint evaluations" if curves else "")
        + (f"; rendered from <code>{_e(source)}</code>" if source else "")
        + ". FID, KID, precision, recall and IS use the shipped "
        f"{_e(data)} classifier's features and logits, not Inception's"
        + (
            "; the columns marked Inception use the FID Inception-v3's"
            if table_metrics(rows) != TABLE_METRICS
            else ""
        )
        + ". Click a column header to sort.</p>",
        "<h2>Shipped models</h2>",
        _models_table(rows, {e["recipe"]: e for e in summary}, fid_tests, page_dir)
        if rows
        else '<p class="muted">No shipped model in this leaderboard: training-run checkpoints only.</p>',
        '<p class="muted">KID ± its std over subsets (absent when every subset is the whole of both sets). '
        "FID over seeds: the training runs' final checkpoints, evaluated on fewer samples than the table.</p>",
    ]
    if summary:
        parts += [
            "<h2>Over training seeds (last step)</h2>",
            f'<p class="muted">Mean ± sample std over seeds; 95 % interval from the t distribution; p-values '
            f"against the plain training of the same process ({plain}) paired by seed and by Welch's test. "
            "A recipe is called better or worse only when p &lt; 0.05 and the difference of the means exceeds "
            "one std; one seed prints no spread. The p-values are not corrected for the "
            f"{len(comparisons)} tests made: at 0.05, about {len(comparisons) / 20:.1f} false calls are expected "
            "by chance alone.</p>",
            _seeds_table(summary, fid_tests),
            *_claims(comparisons),
        ]
    parts += ["<h2>Protocol</h2>"]
    if rows:
        parts += [_protocol_section(rows, payload["settings"]), *_inception_section(rows)]
    checked = [r for r in curves if evaluate.has_protocol(r)]
    if checked:  # the checkpoints' own protocol (fewer samples than the shipped models, often)
        parts += [
            "<h3>Training-run checkpoints</h3>",
            _protocol_section(checked, payload["settings"], table_id="protocol-checkpoints"),
            *_inception_section(checked, table_id="inception-protocol-checkpoints"),
        ]
    settings_text = ", ".join(f"{k}={v}" for k, v in payload["settings"].items())
    merged = payload.get("merged")
    label = (  # a merged board's settings are its last command's: --models names what that run evaluated
        f"Settings of the last run, merged into <code>{_e(Path(merged['from']).name)}</code> "
        "(its rows from earlier runs keep their own protocol, above)"
        if merged
        else "Leaderboard settings"
    )
    parts.append(f'<p class="muted">{label}: <code>{_e(settings_text)}</code></p>')
    plot = _curve_plot(payload, assets)
    step = single_step(curves)  # None for no curves too
    title = "FID against training step" if step is None else f"FID by recipe at training step {step:,}"
    parts.append(f"<h2>{title}</h2>")
    if plot:
        parts.append(f'<img class="plot" alt="{title}" src="{_data_uri(plot)}">')
    else:
        parts.append('<p class="muted">No training-run curves in this leaderboard (run with --runs).</p>')
    parts.append("<h2>FID against NFE</h2>")
    solvers = solver_plots(assets, data)
    if solvers:
        for path in solvers:
            parts.append(f'<img class="plot" alt="{_e(path.stem)}" src="{_data_uri(path.read_bytes())}">')
    else:
        parts.append('<p class="muted">No solvers benchmark (solvers*.png) beside this leaderboard.</p>')
    parts += ["<h2>Sample grids</h2>", '<div class="grids">']
    for row in sorted(rows, key=lambda r: r["model"]):
        grid = assets / f"samples_{row['model']}.png" if assets is not None else None
        link = card_link(row["model"], page_dir)
        caption = f'<a href="{_e(link)}">{_e(row["model"])}</a>' if link else _e(row["model"])
        if grid is not None and grid.is_file():
            image = (
                f'<img class="grid" alt="samples of {_e(row["model"])}" src="{_data_uri(grid.read_bytes())}">'
            )
        else:
            image = '<p class="muted">no sample grid</p>'
        parts.append(f"<figure>{image}<figcaption>{caption}</figcaption></figure>")
    parts += ["</div>", f"<script>{_SCRIPT}</script>", "</body></html>", ""]
    return "\n".join(parts)


def write_page(payload: dict[str, Any], path: Path, assets: Path | None = None, source: str = "") -> Path:
    """Write the page to `path` (images from `assets`, default the page's folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    assets = Path(assets) if assets is not None else path.parent
    path.write_text(
        render_page(payload, assets=assets, page_dir=path.parent, source=source), encoding="utf-8"
    )
    return path


def page_from_json(json_path: Path, out: Path | None = None) -> Path:
    """Render the page of an existing leaderboard JSON, with the PNGs beside it; samples nothing.

    Writes `<out or the JSON's folder>/<JSON stem>.html`."""
    json_path = Path(json_path)
    payload = read_leaderboard_json(json_path)
    folder = Path(out) if out is not None else json_path.parent
    return write_page(
        payload, folder / f"{json_path.stem}.html", assets=json_path.parent, source=json_path.name
    )


def main_from_json(args: argparse.Namespace) -> int:
    """`zoo leaderboard --html --from-json JSON [--out DIR]`: the page and the Markdown of the JSON."""
    if not args.html:
        raise SystemExit("--from-json renders the web page: add --html")
    out = None if Path(args.out) == DEFAULT_OUT else Path(args.out)
    page = page_from_json(Path(args.from_json), out)
    markdown = page.with_suffix(".md")
    markdown.write_text(render_markdown(read_leaderboard_json(Path(args.from_json))))
    print(f"wrote {page} and {markdown}")
    return 0


def _find(names: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def headless_chromium(width: int = 1280, height: int = 900):
    """A selenium driver of Debian's headless Chromium and its chromedriver, offline, console logs kept.

    Raises RuntimeError naming `make install` (which installs them) when either is missing."""
    browser, driver = _find(CHROMIUM), _find(CHROMEDRIVER)
    if browser is None or driver is None:
        raise RuntimeError(
            "headless Chromium and chromedriver are needed (Debian: chromium, chromium-driver); "
            "run `make install`, the project's set-up installs them"
        )
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium never looks for a driver online
    from selenium import webdriver  # the dev extra: only the browser check and the screenshot need it
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def screenshot(page: Path, png: Path, width: int = 1400) -> Path:
    """A full-height PNG screenshot of the page in headless Chromium."""
    driver = headless_chromium(width)
    try:
        driver.get(Path(page).resolve().as_uri())
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, int(height) + 120)
        driver.save_screenshot(str(png))
    finally:
        driver.quit()
    from PIL import Image

    with Image.open(png) as image:  # a 256-colour palette: a third of the size, the text stays sharp
        small = image.convert("RGB").quantize(256)
    small.save(png, optimize=True)
    return Path(png)
