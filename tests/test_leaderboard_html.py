"""The leaderboard's web page (zoo.eval.html) in headless Chromium, its protocol record (zoo.eval.record),
and the plot and table fixes of issue 19.

The browser is Debian's chromium + chromium-driver, which `make install` installs when missing; without
them the browser test FAILS (it is never skipped)."""

import io
import json
import re
import subprocess
from pathlib import Path

import pytest

import zoo
from zoo.cli import main
from zoo.eval import html, leaderboard, record

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
DIGITS_JSON = RESULTS / "leaderboard_digits.json"
MNIST_DDIM25_JSON = RESULTS / "leaderboard_ddim25" / "leaderboard_mnist.json"  # the earlier MNIST board


@pytest.fixture(scope="module")
def digits_page(tmp_path_factory):
    """The page rendered from the committed digits JSON and the grids beside it (no sampling)."""
    out = tmp_path_factory.mktemp("page")
    return html.page_from_json(DIGITS_JSON, out)


@pytest.fixture(scope="module")
def browser():
    try:
        driver = html.headless_chromium()
    except RuntimeError as error:  # a failure, never a skip: `make install` provides the browser
        pytest.fail(f"{error}")
    yield driver
    driver.quit()


def _shown(page: str) -> str:
    """The page's text without its inlined images and its script (lower case)."""
    page = re.sub(r"<script>.*?</script>", "", page, flags=re.S)
    return re.sub(r"data:image/png;base64,[^\"]+", "", page).lower()


def _column_values(driver, table: str, index: int) -> list[float]:
    return driver.execute_script(
        f"return Array.from(document.querySelectorAll('#{table} tbody tr'))"
        f".map(r => parseFloat(r.cells[{index}].dataset.value));"
    )


def _header_index(driver, table: str, text: str) -> int:
    headers = driver.execute_script(
        f"return Array.from(document.querySelectorAll('#{table} thead th')).map(h => h.textContent);"
    )
    return next(i for i, h in enumerate(headers) if h.startswith(text))


def test_page_loads_sorts_and_shows_every_image_in_headless_chromium(digits_page, browser):
    from selenium.webdriver.common.by import By

    payload = json.loads(DIGITS_JSON.read_text())
    browser.get(digits_page.resolve().as_uri())
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []
    rows = browser.find_elements(By.CSS_SELECTOR, "#models tbody tr")
    assert len(rows) == len(payload["results"])
    assert {r.find_element(By.TAG_NAME, "a").text for r in rows} == {r["model"] for r in payload["results"]}

    accuracies = _column_values(browser, "models", _header_index(browser, "models", "class accuracy"))
    assert accuracies != sorted(accuracies)  # the page's own order is not the one the first click makes
    # numeric sort: ascending on the first click, descending on the second, for three columns
    for table, header in (
        ("models", "class accuracy"),
        ("models", "FID (classifier)"),
        ("seeds", "paired p"),
    ):
        index = _header_index(browser, table, header)
        th = browser.find_elements(By.CSS_SELECTOR, f"#{table} thead th")[index]
        th.click()
        values = [v for v in _column_values(browser, table, index) if v is not None]  # blanks sort last
        assert len(values) >= 5 and values == sorted(values)
        th.click()
        raw = _column_values(browser, table, index)
        values = [v for v in raw if v is not None]
        assert values == sorted(values, reverse=True)
        assert raw[len(values) :] == [None] * (len(raw) - len(values))  # blanks last both ways

    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]);"
    )
    solver_plots = len(html.solver_plots(RESULTS, "digits"))  # FID against NFE: this data set's plots
    # a grid per model, the FID-vs-step plot and the solvers benchmark's plots
    assert len(images) == len(payload["results"]) + 1 + solver_plots
    assert all(complete and width > 0 for _, complete, width in images), images


def test_page_is_self_contained_and_states_the_statistics(digits_page):
    text = digits_page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # nothing from the network
    assert "<link" not in text and "<script src" not in text
    assert all(
        src.startswith("data:image/png;base64,") for src in re.findall(r'<img[^>]* src="([^"]+)"', text)
    )
    # a claim is no stronger than its test: FAMO is worse (p < 0.05, > 1 std); Nash-MTL's FID is not
    # better, its class accuracy is; each worded as the JSON's verdict says
    verdicts = {(c["recipe"], c["metric"]): c for c in json.loads(DIGITS_JSON.read_text())["comparisons"]}
    assert verdicts[("dit_t_famo_k5", "fid_classifier")]["verdict"] == "worse"
    assert "dit_t_famo_k5 is worse than dit_t (fid_classifier" in text
    nash = verdicts[("dit_t_nash_k5", "fid_classifier")]
    assert nash["verdict"] == "no clear difference" and nash["paired_p"] > 0.05
    assert re.search(r"dit_t_nash_k5 vs dit_t: no clear difference \(p = 0\.\d+; fid_classifier", text)
    assert verdicts[("dit_t_nash_k5", "class_accuracy")]["verdict"] == "better"
    assert "dit_t_nash_k5 is better than dit_t (class_accuracy" in text
    assert "nan" not in _shown(text)
    # card links are relative and point at the shipped cards
    links = re.findall(r'<a href="([^"]+)"', text)
    assert links and all(not link.startswith(("/", "file:", "http")) for link in links)
    page_in_results = html.card_link("dit_t.digits", RESULTS)
    assert page_in_results == "../../zoo/pretrained/dit_t.digits/README.md"
    assert (RESULTS / page_in_results).is_file()


def test_the_committed_page_has_one_row_per_model_of_the_committed_json():
    payload = json.loads(DIGITS_JSON.read_text())
    text = (RESULTS / "leaderboard_digits.html").read_text()
    body = text.split('<table id="models"', 1)[1].split("</tbody>", 1)[0]
    assert body.count("<tr>") - 1 == len(payload["results"])  # minus the header row
    assert (RESULTS / "leaderboard_digits.png").is_file()


@pytest.mark.parametrize(
    "board", sorted(p.relative_to(RESULTS).as_posix() for p in RESULTS.glob("**/leaderboard_*.json"))
)
def test_every_committed_markdown_is_what_its_json_renders(board):
    """The Markdown beside each committed leaderboard JSON is regenerated, not stale or hand-edited
    (`zoo leaderboard --html --from-json JSON` rewrites it)."""
    payload = json.loads((RESULTS / board).read_text())
    assert (RESULTS / board).with_suffix(".md").read_text() == leaderboard.render_markdown(payload)


def test_from_json_through_the_cli_and_its_errors(tmp_path):

    assert main(["leaderboard", "--html", "--from-json", str(DIGITS_JSON), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "leaderboard_digits.html").is_file()
    assert (tmp_path / "leaderboard_digits.md").read_text() == (RESULTS / "leaderboard_digits.md").read_text()
    with pytest.raises(SystemExit, match="add --html"):
        main(["leaderboard", "--from-json", str(DIGITS_JSON), "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError):
        html.page_from_json(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a leaderboard JSON"):
        html.page_from_json(tmp_path / "other.json")


def test_single_seed_tables_print_no_spread():
    payload = json.loads(MNIST_DDIM25_JSON.read_text())  # one seed per recipe, NaN std in the old JSON
    markdown = leaderboard.render_markdown(payload)
    assert "nan" not in markdown.lower()
    row = next(line for line in markdown.splitlines() if line.startswith("| dit_t_p4 | 8000 | 1 |"))
    assert "±" not in row
    page = html.render_page(payload, assets=RESULTS)
    assert "nan" not in _shown(page)
    assert "one seed on a side, no test" in page


def test_old_json_keys_are_still_read_and_new_ones_are_classifier_named():
    assert record.column({"fid": 1.5}, "fid") == 1.5
    assert record.column({"fid_classifier": 2.5, "fid": 9.0}, "fid") == 2.5
    assert record.column({"class_accuracy": 0.9}, "class_accuracy") == 0.9
    assert record.column({}, "kid") is None
    protocol = {"kid_subset_size": 180, "reference_size": 180, "num_samples": 180}
    row = {"model": "m", "fid": 3.0, "kid": 4.0, "kid_std": 0.0, "class_accuracy": 0.5, "protocol": protocol}
    named = record.feature_named(row)
    assert named["fid_classifier"] == 3.0 and named["kid_classifier"] == 4.0 and "fid" not in named
    assert "kid_classifier_std" not in named  # every subset is the whole of both sets: the std is absent
    kept = record.feature_named({**row, "protocol": {**protocol, "num_samples": 500}})
    assert kept["kid_classifier_std"] == 0.0
    assert named["class_accuracy"] == 0.5


def test_protocol_record_holds_every_setting_and_the_code_version():
    model = zoo.create("dit_t.digits", pretrained=True)
    settings = leaderboard.LeaderboardSettings(samples=500, steps=25)
    extra = record.protocol_record(settings, model, reference_size=180)
    assert extra["process"] == "ddpm" and extra["solver"] == "ddim" and extra["nfe"] == 25
    assert extra["eta"] == 0.0 and extra["x0_clipping"] is True and extra["guidance_doubles_batch"] is False
    assert extra["label_scheme"].startswith("class-balanced")
    assert (extra["kid_subsets"], extra["kid_subset_size"], extra["reference_size"]) == (100, 180, 180)
    assert extra["package_version"] == zoo.__version__
    root = Path(zoo.__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert extra["git_commit"] == (head.stdout.strip() if head.returncode == 0 else "unknown")


def test_the_run_writes_the_page_and_the_full_record(tmp_path):
    name = "dit_t.digits"
    settings = leaderboard.LeaderboardSettings(samples=20, steps=2, kid_subsets=3)
    leaderboard.run_leaderboard(settings, out=tmp_path, names=[name], tag="t", page_writer=html.write_page)
    (row,) = json.loads((tmp_path / "leaderboard_t.json").read_text())["results"]
    assert set(html.EXPECTED_PROTOCOL) - {"sampler"} <= set(row["protocol"])
    assert row["protocol"]["kid_subset_size"] == 20 and "fid_classifier" in row
    page = (tmp_path / "leaderboard_t.html").read_text()
    assert f"samples of {name}" in page and "not recorded" not in page


def test_every_recipe_gets_its_own_colour_and_marker(monkeypatch):
    import matplotlib.pyplot as plt

    recipes = [f"recipe_{i:02d}" for i in range(12)]
    styles = leaderboard.recipe_styles(recipes)
    assert len({c for c, _ in styles.values()}) == 12 and len({m for _, m in styles.values()}) == 12
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at its lines
    curves = [
        {"recipe": r, "seed": s, "step": t, "fid_classifier": 10.0 + s + i}
        for i, r in enumerate(recipes)
        for s in (0, 1)
        for t in (100, 200)
    ]
    buffer = io.BytesIO()
    leaderboard.plot_curves(curves, buffer)
    assert buffer.getvalue().startswith(b"\x89PNG")
    lines = figures[0].axes[0].get_lines()
    assert len(lines) == 12
    assert len({(line.get_color(), line.get_marker()) for line in lines}) == 12
    assert (
        len({line.get_color() for line in lines}) == 12 and len({line.get_marker() for line in lines}) == 12
    )


def test_a_board_of_last_checkpoints_plots_fid_by_recipe_with_each_seed_and_the_spread(monkeypatch):
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection, PathCollection

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    fids = {"plain": [14.0, 15.0, 16.0], "dtr": [12.0, 13.0, 17.0], "uw_k5": [20.0]}
    curves = [
        {"recipe": r, "seed": s, "step": 16000, "fid_classifier": f}
        for r, values in fids.items()
        for s, f in enumerate(values)
    ]
    assert leaderboard.single_step(curves) == 16000
    assert leaderboard.single_step([*curves, {**curves[0], "step": 8000}]) is None
    leaderboard.plot_curves(curves, io.BytesIO(), "mnist")
    axis = figures[0].axes[0]
    assert [t.get_text() for t in axis.get_xticklabels()] == ["dtr", "plain", "uw_k5"]  # best mean first
    assert "16,000" in axis.get_xlabel() and axis.get_yscale() == "linear"
    points = [c for c in axis.collections if isinstance(c, PathCollection)]
    assert sorted(y for c in points for _, y in c.get_offsets()) == sorted(
        f for v in fids.values() for f in v
    )
    means = {
        line.get_xdata()[0]: line.get_ydata()[0] for line in axis.get_lines() if line.get_marker() != "_"
    }
    assert means == {0: 14.0, 1: 15.0, 2: 20.0}
    bars = [
        sorted(seg[:, 1])
        for c in axis.collections
        if isinstance(c, LineCollection)
        for seg in c.get_segments()
    ]
    assert bars == [pytest.approx([14 - 7**0.5, 14 + 7**0.5]), pytest.approx([14, 16])]  # no bar for one seed
    page = html.render_page(
        {"settings": {"data": "mnist"}, "results": [], "curves": curves, "summary": []}, assets=None
    )
    assert "FID by recipe at training step 16,000" in page and "FID against training step" not in page
    assert "Leaderboard settings:" in page and "Settings of the last run" not in page
    merged = {"from": "out/leaderboard_mnist.json", "kept": {}, "replaced": {}, "dropped": []}
    page = html.render_page(
        {"settings": {"data": "mnist", "models": "one"}, "results": [], "curves": curves, "merged": merged}
    )
    assert "Settings of the last run, merged into <code>leaderboard_mnist.json</code>" in page
