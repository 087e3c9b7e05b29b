"""The leaderboard over both processes (issue 18) and regenerating a part of it (issue 19): one solver per
process, the missing-solver error before sampling, `--merge`, and tests against the plain recipe of the
same process. Tiny untrained models built here (8x8, 20 samples, a few steps)."""

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
from scipy import stats as scipy_stats

import zoo
from zoo.eval import html, leaderboard, record

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
DIGITS_JSON = RESULTS / "leaderboard_digits.json"
FAST_JSON = RESULTS / "leaderboard_ddim25" / "leaderboard_digits.json"  # the earlier board
SMALL = dict(input_size=8, in_channels=1, num_classes=10)


def tiny(name: str, seed: int = 0) -> zoo.DiffusionModel:
    """An untrained digits-shaped model whose output head is not zero (so samples vary)."""
    torch.manual_seed(seed)
    model = zoo.create(name, **SMALL)
    with torch.no_grad():
        for p in model.net.final_layer.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def entry(name: str, model, calls: list | None = None) -> leaderboard.Entry:
    def load():
        if calls is not None:
            calls.append(name)
        return model

    weights = b"".join(t.numpy().tobytes() for t in model.net.state_dict().values())
    sha = hashlib.sha256(weights).hexdigest()
    return leaderboard.Entry(name, leaderboard.model_process(model), sha, load)


def write_run(runs: Path, recipe: str, seed: int, steps: tuple[int, ...]) -> None:
    """A finished training run in the trainer's layout: EMA checkpoints and final/config.json."""
    for step in steps:
        model = tiny(recipe, seed=100 * seed + step)
        folder = runs / recipe / f"seed{seed}" / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        state = {"model_config": json.dumps(model.config), "ema": model.net.state_dict()}
        torch.save(state, folder / f"step-{step:08d}.pt")
    final = runs / recipe / f"seed{seed}" / "final"
    final.mkdir(exist_ok=True)
    (final / "config.json").write_text(json.dumps(model.config))


def parse(*argv: str) -> leaderboard.LeaderboardSettings:
    args = leaderboard.add_leaderboard_arguments(argparse.ArgumentParser()).parse_args(list(argv))
    return leaderboard.LeaderboardSettings(
        steps=args.steps, solvers=tuple(args.solvers or ()), grid=args.grid
    )


def table(settings) -> dict[str, tuple[str, int]]:
    return {p: (c.solver, c.steps) for p, c in settings.table.items()}


def test_solver_flags_one_per_process_with_defaults_and_the_old_single_form():
    assert table(parse()) == {"ddpm": ("ddim", 50), "flow": ("euler", 50)}
    assert table(parse("--solver", "ddim", "--solver", "heun:13")) == {
        "ddpm": ("ddim", 50),
        "flow": ("heun", 13),
    }
    # the old single form: --steps moves every solver without its own :N, the defaults too
    assert table(parse("--solver", "dpm++2m", "--steps", "10")) == {
        "ddpm": ("dpm++2m", 10),
        "flow": ("euler", 10),
    }
    assert table(parse("--sampler", "euler", "--steps", "7", "--solver", "ddim:4")) == {
        "ddpm": ("ddim", 4),
        "flow": ("euler", 7),
    }
    assert table(parse("--solver", "euler")) == {"ddpm": ("ddim", 50), "flow": ("euler", 50)}
    # a solver named without :N gets 50 NFE per image: Heun 25 steps (two net calls per step)
    assert table(parse("--solver", "heun")) == {"ddpm": ("ddim", 50), "flow": ("heun", 25)}
    karras = parse("--solver", "dpm++2m:9", "--grid", "karras")
    assert karras.choice("ddpm").options == (("grid", "karras"),) and karras.choice("flow").options == ()
    with pytest.raises(ValueError, match="two solvers for the 'flow' process"):
        parse("--solver", "heun", "--solver", "euler")
    with pytest.raises(ValueError, match="no solver of the protocol .* takes a time grid"):
        parse("--grid", "karras")
    with pytest.raises(ValueError, match="needs steps >= 3"):
        parse("--solver", "dpm++2m:2")
    with pytest.raises(SystemExit):  # argparse refuses an unknown solver and bad steps at parse time
        parse("--solver", "heun:x")
    with pytest.raises(SystemExit):
        parse("--solver", "dopri5")
    settings = parse("--solver", "heun:13")
    assert settings.to_dict()["solvers"]["flow"] == {"solver": "heun", "steps": 13, "options": {}}


@pytest.fixture(scope="module")
def evaluator():
    return leaderboard.Evaluator(leaderboard.LeaderboardSettings(samples=20, batch=20, kid_subsets=3))


def test_the_default_protocol_costs_50_nfe_in_both_processes(evaluator):
    """Measured, not assumed: Euler 50 steps = 50 net calls, DDIM 50 steps = 50; Heun makes two net calls
    per step, the last included (12 steps = 24 NFE)."""
    _, _, cost = evaluator.draw(tiny("sit_t"))
    assert (cost["solver"], cost["nfe"], cost["net_calls"]) == ("euler", 50, 50)
    _, _, cost = evaluator.draw(tiny("dit_t"))
    assert (cost["solver"], cost["nfe"], cost["net_calls"]) == ("ddim", 50, 50)
    heun = leaderboard.Evaluator(
        leaderboard.LeaderboardSettings(samples=20, batch=20, kid_subsets=3, solvers=("heun:12",)),
        like=evaluator,
    )
    _, _, cost = heun.draw(tiny("sit_t"))
    assert (cost["solver"], cost["nfe"], cost["net_calls"]) == ("heun", 24, 24)


def test_a_mixed_leaderboard_samples_each_model_with_its_process_solver(tmp_path, capsys):
    runs = tmp_path / "runs"
    for recipe in ("dit_t", "sit_t"):
        write_run(runs, recipe, 0, (10, 20))
    models = {"tiny_dit.digits": tiny("dit_t"), "tiny_sit.digits": tiny("sit_t_dtr")}
    settings = leaderboard.LeaderboardSettings(
        samples=20, batch=10, kid_subsets=3, solvers=("ddim:3", "heun:2")
    )
    payload = leaderboard.run_leaderboard(
        settings,
        out=tmp_path / "out",
        runs=runs,
        curve_samples=10,
        entries=[entry(n, m) for n, m in models.items()],
        tag="mixed",
        page_writer=html.write_page,
    )
    rows = {r["model"]: r["protocol"] for r in payload["results"]}
    # measured, not assumed: DDIM 3 steps = 3 NFE; Heun 2 steps = 4 NFE; two batches of 10 each
    assert {k: rows["tiny_dit.digits"][k] for k in ("process", "solver", "sampler", "steps", "nfe")} == {
        "process": "ddpm",
        "solver": "ddim",
        "sampler": "ddim",
        "steps": 3,
        "nfe": 3,
    }
    assert rows["tiny_dit.digits"]["net_calls"] == 6
    assert {k: rows["tiny_sit.digits"][k] for k in ("process", "solver", "sampler", "steps", "nfe")} == {
        "process": "flow",
        "solver": "heun",
        "sampler": "heun",
        "steps": 2,
        "nfe": 4,
    }
    assert rows["tiny_sit.digits"]["net_calls"] == 8
    curves = {(c["recipe"], c["step"]): c["protocol"] for c in payload["curves"]}
    assert set(curves) == {("dit_t", 10), ("dit_t", 20), ("sit_t", 10), ("sit_t", 20)}
    assert {(p["process"], p["solver"], p["nfe"], p["num_samples"]) for p in curves.values()} == {
        ("ddpm", "ddim", 3, 10),
        ("flow", "heun", 4, 10),
    }
    markdown = (tmp_path / "out" / "leaderboard_mixed.md").read_text()
    ddpm_line = next(line for line in markdown.splitlines() if line.startswith("Protocol (ddpm, 1 rows)"))
    flow_line = next(line for line in markdown.splitlines() if line.startswith("Protocol (flow, 1 rows)"))
    assert "solver=ddim" in ddpm_line and "steps=3" in ddpm_line and "nfe=3" in ddpm_line
    assert "solver=heun" in flow_line and "steps=2" in flow_line and "nfe=4" in flow_line
    page = (tmp_path / "out" / "leaderboard_mixed.html").read_text()
    protocol = page.split('<table id="protocol">', 1)[1].split("</table>", 1)[0]
    assert "ddpm (1 rows)" in protocol and "flow (1 rows)" in protocol
    assert "<code>heun</code>" in protocol and "<code>ddim</code>" in protocol
    assert "flow: heun, 2 (4 NFE)" in page and "ddpm: ddim, 3 (3 NFE)" in page  # the models table
    # --runs follows --models: only the flow recipe's checkpoints
    only = leaderboard.run_checkpoints(runs, "sit_t*")
    assert {(c.recipe, c.process) for c in only} == {("sit_t", "flow")}
    assert {c.recipe for c in leaderboard.run_checkpoints(runs, "*.digits")} == {"dit_t", "sit_t"}


def test_a_process_without_a_solver_is_refused_before_any_sampling(tmp_path):
    calls: list[str] = []
    settings = leaderboard.LeaderboardSettings(samples=20, defaults={"ddpm": "ddim:2"})  # no flow solver
    entries = [entry("a_dit.digits", tiny("dit_t"), calls), entry("b_sit.digits", tiny("sit_t"), calls)]
    with pytest.raises(
        leaderboard.MissingSolverError, match=r"b_sit\.digits \(flow\).*\['euler', 'heun', 'sde'\]"
    ):
        leaderboard.run_leaderboard(settings, out=tmp_path / "out", entries=entries)
    assert calls == [] and not (tmp_path / "out").exists()  # nothing loaded, sampled or written
    runs = tmp_path / "runs"
    write_run(runs, "sit_t", 0, (5,))
    with pytest.raises(leaderboard.MissingSolverError, match=r"sit_t@seed0 step 5 \(flow\)"):
        leaderboard.run_leaderboard(settings, out=tmp_path / "out", entries=entries[:1], runs=runs)
    assert calls == []
    with pytest.raises(leaderboard.MissingSolverError, match="no solver for the 'flow' process"):
        leaderboard.Evaluator(settings).draw(tiny("sit_t"))


def test_merge_keeps_equal_protocols_drops_changed_ones_and_replaces_reevaluated_rows(tmp_path, capsys):
    dit, sit = tiny("dit_t"), tiny("sit_t")
    base = dict(samples=20, batch=20, kid_subsets=3)
    first = leaderboard.run_leaderboard(
        leaderboard.LeaderboardSettings(**base, solvers=("ddim:3", "heun:2")),
        out=tmp_path / "first",
        entries=[entry("a_dit.digits", dit), entry("b_sit.digits", sit)],
    )
    old_sit = next(r for r in first["results"] if r["model"] == "b_sit.digits")
    # the same protocol: the DDPM row is kept as it was, the flow row is re-evaluated (new weights)
    retrained = tiny("sit_t", seed=7)
    second = leaderboard.run_leaderboard(
        leaderboard.LeaderboardSettings(**base, solvers=("ddim:3", "heun:2")),
        out=tmp_path / "second",
        entries=[entry("b_sit.digits", retrained)],
        merge=tmp_path / "first" / "leaderboard_digits.json",
    )
    rows = {r["model"]: r for r in second["results"]}
    assert set(rows) == {"a_dit.digits", "b_sit.digits"}
    assert rows["a_dit.digits"] == next(r for r in first["results"] if r["model"] == "a_dit.digits")
    assert rows["b_sit.digits"]["protocol"]["weights_sha256"] != old_sit["protocol"]["weights_sha256"]
    assert rows["b_sit.digits"]["fid_classifier"] != old_sit["fid_classifier"]
    assert second["merged"]["kept"]["results"] == ["a_dit.digits"]
    assert second["merged"]["replaced"]["results"] == 1 and second["merged"]["dropped"] == []
    written = json.loads((tmp_path / "second" / "leaderboard_digits.json").read_text())
    assert {r["model"] for r in written["results"]} == {"a_dit.digits", "b_sit.digits"}
    # a changed DDPM protocol (4 steps, not 3) drops the old DDPM row, with the reason printed
    capsys.readouterr()
    third = leaderboard.run_leaderboard(
        leaderboard.LeaderboardSettings(**base, solvers=("ddim:4", "heun:2")),
        out=tmp_path / "third",
        entries=[entry("c_sit.digits", tiny("sit_t", seed=3))],
        merge=first,
    )
    printed = capsys.readouterr().out
    assert "dropped results row a_dit.digits: steps: 3 != 4" in printed
    assert {r["model"] for r in third["results"]} == {"b_sit.digits", "c_sit.digits"}  # flow: still equal
    (dropped,) = third["merged"]["dropped"]
    assert dropped["row"] == "a_dit.digits" and "sampler" not in dropped["reason"]
    # a measured field is compared with a row of the same process this run measured
    tampered = json.loads(json.dumps(first))
    next(r for r in tampered["results"] if r["model"] == "b_sit.digits")["protocol"]["nfe"] = 5
    fourth = leaderboard.run_leaderboard(
        leaderboard.LeaderboardSettings(**base, solvers=("ddim:3", "heun:2")),
        out=tmp_path / "fourth",
        entries=[entry("c_sit.digits", tiny("sit_t", seed=3))],
        merge=tampered,
    )
    assert {r["model"] for r in fourth["results"]} == {"a_dit.digits", "c_sit.digits"}
    assert "nfe: 5 != 4" in fourth["merged"]["dropped"][0]["reason"]
    # another data set's leaderboard is refused
    other = {**first, "settings": {**first["settings"], "data": "mnist"}}
    with pytest.raises(ValueError, match="leaderboard of 'mnist'"):
        leaderboard.run_leaderboard(
            leaderboard.LeaderboardSettings(**base), out=tmp_path / "x", entries=[], merge=other
        )


def test_merge_keeps_the_committed_rows_under_their_own_protocol():
    """The earlier digits board (DDIM 25 / Heun 12) predates `process`, `solver` and `nfe` on its DDPM rows:
    they are derived from its `sampler`; under its protocol every row and curve is kept, under another DDPM
    solver every DDPM one is dropped. The committed board is kept whole under the default protocol."""
    old = json.loads(FAST_JSON.read_text())
    fast = ("ddim:25", "heun:12")
    settings = leaderboard.LeaderboardSettings(solvers=fast)
    evaluator = leaderboard.Evaluator(settings)
    curves = leaderboard.Evaluator(leaderboard.LeaderboardSettings(samples=200, solvers=fast), like=evaluator)
    merged = leaderboard.merge_payload({"settings": {}, "results": []}, old, evaluator, curves, "x")
    assert merged["merged"]["dropped"] == []
    assert len(merged["results"]) == len(old["results"]) and len(merged["curves"]) == len(old["curves"])
    assert set(merged["merged"]["not_compared"]["ddpm"]) == {"eta", "label_scheme", "output_clamp"}
    other = ("ddim:20", "heun:12")
    changed = leaderboard.Evaluator(leaderboard.LeaderboardSettings(solvers=other), like=evaluator)
    changed_curves = leaderboard.Evaluator(
        leaderboard.LeaderboardSettings(samples=200, solvers=other), like=evaluator
    )
    dropped = leaderboard.merge_payload({"settings": {}, "results": []}, old, changed, changed_curves, "x")
    ddpm = [r for r in old["results"] if record.row_process(r) == "ddpm"]
    assert len(ddpm) >= 11 and all(record.row_process(r) != "ddpm" for r in dropped["results"])
    assert all(record.row_process(r) != "ddpm" for r in dropped.get("curves", []))
    assert {d["reason"] for d in dropped["merged"]["dropped"]} == {"steps: 25 != 20"}
    assert len(dropped["merged"]["dropped"]) == len(ddpm) + sum(
        record.row_process(c) == "ddpm" for c in old["curves"]
    )
    current = json.loads(DIGITS_JSON.read_text())
    default = leaderboard.Evaluator(leaderboard.LeaderboardSettings(), like=evaluator)
    default_curves = leaderboard.Evaluator(leaderboard.LeaderboardSettings(samples=200), like=evaluator)
    kept = leaderboard.merge_payload({"settings": {}, "results": []}, current, default, default_curves, "x")
    assert kept["merged"]["dropped"] == [] and len(kept["results"]) == len(current["results"])
    assert {record.row_process(r) for r in kept["results"]} == {"ddpm", "flow"}
    assert len(kept["curves"]) == len(current["curves"])
    dropped = leaderboard.merge_payload({"settings": {}, "results": []}, current, evaluator, curves, "x")
    assert dropped["results"] == [] and dropped.get("curves", []) == []  # every row is of 50 NFE


def _curve(recipe: str, seed: int, fid: float, process: str | None) -> dict:
    protocol = {"process": process} if process else {"sampler": "ddim"}  # no process: an older row
    return {"recipe": recipe, "seed": seed, "step": 100, "fid_classifier": fid, "protocol": protocol}


def test_recipes_are_compared_with_the_plain_recipe_of_their_own_process():
    values = {
        ("dit_t", None): [10.0, 11.0, 12.5],
        ("dit_t_nash_k5", None): [9.0, 10.5, 11.0],
        ("sit_t", "flow"): [20.0, 22.0, 21.0],
        ("sit_t_dtr", "flow"): [15.0, 18.0, 16.5],
        ("sit_t_minsnr", "flow"): [21.0, 22.5, 20.0],
    }
    curves = [
        _curve(recipe, seed, fid, process)
        for (recipe, process), fids in values.items()
        for seed, fid in enumerate(fids)
    ]
    tests = {c["recipe"]: c for c in record.comparisons(curves, metrics=("fid",))}
    assert set(tests) == {"dit_t_nash_k5", "sit_t_dtr", "sit_t_minsnr"}  # no plain compared with the other
    assert {r: (t["baseline"], t["process"]) for r, t in tests.items()} == {
        "dit_t_nash_k5": ("dit_t", "ddpm"),
        "sit_t_dtr": ("sit_t", "flow"),
        "sit_t_minsnr": ("sit_t", "flow"),
    }
    for recipe, baseline, process in (
        ("sit_t_dtr", "sit_t", "flow"),
        ("dit_t_nash_k5", "dit_t", None),
    ):
        expected = scipy_stats.ttest_rel(values[(recipe, process)], values[(baseline, process)]).pvalue
        assert tests[recipe]["paired_p"] == pytest.approx(expected, rel=1e-12)
        assert tests[recipe]["difference"] == pytest.approx(
            sum(values[(recipe, process)]) / 3 - sum(values[(baseline, process)]) / 3
        )
    assert record.baselines(list(tests.values())) == {"ddpm": "dit_t", "flow": "sit_t"}
    markdown = leaderboard.render_markdown({"settings": {"data": "digits"}, "results": [], "curves": curves})
    assert "Plain recipes: dit_t (ddpm), sit_t (flow)." in markdown
    assert "| sit_t_dtr | sit_t | fid_classifier |" in markdown


def test_keep_evaluated_samples_only_what_the_merged_json_lacks(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_run(runs, "dit_t", 0, (1, 2))
    settings = leaderboard.LeaderboardSettings(samples=20, batch=20, kid_subsets=3, solvers=("ddim:3",))
    model, calls = tiny("dit_t"), []

    def board(out: str, merge=None, protocol=settings, entries=()) -> tuple[dict, str]:
        capsys.readouterr()
        payload = leaderboard.run_leaderboard(
            protocol,
            out=tmp_path / out,
            runs=runs,
            curve_samples=20,
            entries=list(entries),
            merge=merge,
            keep_evaluated=merge is not None,
        )
        return payload, capsys.readouterr().out

    first, _ = board("first", entries=[entry("a.digits", model)])
    write_run(runs, "dit_t", 1, (1, 2))  # a second seed finished since
    second, printed = board(
        "second", tmp_path / "first" / "leaderboard_digits.json", entries=[entry("a.digits", model, calls)]
    )
    assert "1 of 1 models and 2 of 4 checkpoints already evaluated" in printed
    assert calls == []  # the shipped model was not even loaded
    assert second["results"] == first["results"]
    assert [(r["seed"], r["step"]) for r in second["curves"]] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert second["curves"][:2] == first["curves"] and second["seed_summary"][0]["seeds"] == [0, 1]
    # a kept row is what sampling again gives (seeded), so keeping it changes no number
    fresh, _ = board("fresh")
    for kept, again in zip(second["curves"], fresh["curves"]):
        assert kept["fid_classifier"] == again["fid_classifier"] and kept["step"] == again["step"]
    # a checkpoint whose weights changed (a run retrained into the same folder) is sampled again
    torch.save(
        {"model_config": json.dumps(model.config), "ema": tiny("dit_t", seed=99).net.state_dict()},
        runs / "dit_t" / "seed0" / "checkpoints" / "step-00000002.pt",
    )
    third, printed = board("third", second)
    assert "3 of 4 checkpoints already evaluated" in printed
    changed = next(r for r in third["curves"] if (r["seed"], r["step"]) == (0, 2))
    assert changed["fid_classifier"] != second["curves"][1]["fid_classifier"]
    # another protocol keeps nothing; and without --merge there is nothing to keep
    _, printed = board("fourth", third, protocol=dataclasses.replace(settings, solvers=("ddim:4",)))
    assert "0 of 4 checkpoints already evaluated" in printed
    with pytest.raises(ValueError, match="--keep-evaluated needs --merge"):
        leaderboard.run_leaderboard(settings, out=tmp_path / "x", runs=runs, entries=[], keep_evaluated=True)


def test_curve_every_keeps_the_multiples_and_each_runs_last_checkpoint(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "dit_t", 0, (1, 2, 3, 4, 5))
    write_run(runs, "dit_t", 1, (2, 4, 7))  # a run whose last step is no multiple
    settings = leaderboard.LeaderboardSettings(samples=20, batch=20, kid_subsets=3, solvers=("ddim:3",))

    def board(every, out):
        return leaderboard.run_leaderboard(
            settings, out=tmp_path / out, runs=runs, curve_samples=20, entries=[], curve_every=every
        )

    thinned, full = board(2, "thin"), board(None, "full")
    assert [(r["seed"], r["step"]) for r in thinned["curves"]] == [
        (0, 2),
        (0, 4),
        (0, 5),
        (1, 2),
        (1, 4),
        (1, 7),
    ]
    assert thinned["settings"]["curve_every"] == 2 and "curve_every" not in full["settings"]
    # the kept checkpoints are sampled exactly as in the full board, and the seed statistics read the same rows
    by_step = {(r["seed"], r["step"]): r["fid_classifier"] for r in full["curves"]}
    assert all(r["fid_classifier"] == by_step[(r["seed"], r["step"])] for r in thinned["curves"])
    assert thinned["seed_summary"] == full["seed_summary"]
    # a board of checkpoints alone states their protocol (it had none: only the shipped rows' was shown)
    markdown, page = leaderboard.render_markdown(thinned), html.render_page(thinned)
    line = next(x for x in markdown.splitlines() if x.startswith(leaderboard.CURVES_PROTOCOL))
    assert line.startswith(
        f"{leaderboard.CURVES_PROTOCOL} (ddpm, 6 rows): sampler=ddim, steps=3, guidance=1.0"
    )
    assert "num_samples=20" in line and "No shipped model in this leaderboard" in markdown
    assert 'id="protocol-checkpoints"' in page and 'id="models"' not in page
    # a run's length alone: only the last checkpoints
    assert [r["step"] for r in board(100, "last")["curves"]] == [5, 7]
    with pytest.raises(ValueError, match="curve_every must be >= 1"):
        board(0, "zero")
    with pytest.raises(ValueError, match="no --runs was given"):
        leaderboard.run_leaderboard(settings, out=tmp_path / "x", entries=[], curve_every=2)


def test_runs_only_evaluates_the_checkpoints_and_no_shipped_model(tmp_path, monkeypatch, capsys):
    from zoo.cli import main

    runs, out = tmp_path / "runs", tmp_path / "board"
    write_run(runs, "dit_t", 0, (1, 2))
    assert leaderboard.shipped_names("digits", "dit_t")  # the pattern matches a shipped model too

    def refuse(name):
        raise RuntimeError(f"{name} was loaded")

    monkeypatch.setattr(leaderboard, "shipped_entry", refuse)
    argv = ["leaderboard", "--data", "digits", "--models", "dit_t", "--samples", "20", "--batch", "20"]
    argv += ["--solver", "ddim:3", "--runs", str(runs), "--curve-samples", "20", "--out", str(out)]
    assert main([*argv, "--runs-only"]) == 0
    payload = json.loads((out / "leaderboard_digits.json").read_text())
    assert payload["results"] == [] and [(r["seed"], r["step"]) for r in payload["curves"]] == [
        (0, 1),
        (0, 2),
    ]
    # without it the shipped model is evaluated (here: loaded, which the patch refuses)
    assert main(argv) == 2 and "dit_t.digits was loaded" in capsys.readouterr().err
    # and it needs runs: refused before anything is written
    assert main(["leaderboard", "--runs-only", "--out", str(tmp_path / "none")]) == 2
    assert "no --runs was given" in capsys.readouterr().err and not (tmp_path / "none").exists()
