"""The README tells the truth: its links stay in the repository, scripts/check_readme.py parses every
command and snippet, the short commands succeed, and the committed record is of this README."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_readme", ROOT / "scripts" / "check_readme.py")
check_readme = importlib.util.module_from_spec(spec)
sys.modules["check_readme"] = check_readme  # dataclasses look their module up
spec.loader.exec_module(check_readme)


@pytest.mark.parametrize("doc", ["README.md", "ARCHITECTURE.md", "CONTRIBUTING.md"])
def test_doc_links_stay_inside_the_repository(doc):
    text = (ROOT / doc).read_text()
    assert "../shared" not in text
    links = re.findall(r"\]\(([^)]+)\)", text)
    for link in links:
        assert not re.match(r"[a-z]+://", link), (doc, link)
        target = (ROOT / doc).parent / link.split("#")[0]
        assert target.resolve().is_relative_to(ROOT) and target.exists(), (doc, link)
    if doc == "README.md":
        assert "ARCHITECTURE.md" in links


def test_check_readme_parses_every_command_and_snippet():
    text = (ROOT / "README.md").read_text()
    items = check_readme.parse_readme(text)
    bash_lines = [
        line.split("  #")[0].strip()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S)
        for line in block.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert [i.text for i in items if i.kind == "bash"] == [re.sub(r"\s+#\s.*$", "", b) for b in bash_lines]
    assert len([i for i in items if i.kind == "python"]) == len(re.findall(r"```python\n", text))
    for item in items:
        assert item.cls in ("short", "long", "skip")
        assert item.cls == "short" or item.reason, item.text
    # what cannot run offline is named, and the main commands are not skipped
    classes = {i.text.split()[0] + " " + i.text.split()[1]: i.cls for i in items if i.kind == "bash"}
    assert classes["zoo info"] == "short" and classes["make demo"] == "short"
    python = [s for i in items if i.kind == "python" for s in i.statements]
    network = [s for s in python if s["class"] == "skip"]
    assert network and all(
        "dit_xl.in1k" in s["code"]
        or "placeholder" in s["reason"]
        or s["reason"].startswith(("needs a GPU", "needs ANT"))
        for s in network
    )


def test_short_readme_commands_succeed_in_a_fresh_directory(tmp_path):
    items = {i.text: i for i in check_readme.parse_readme((ROOT / "README.md").read_text())}
    bin_dir = tmp_path / "bin"
    check_readme._wrappers(bin_dir)
    env = check_readme._environment(bin_dir)
    work = tmp_path / "work"
    work.mkdir()
    info = check_readme.run_item(items["zoo info dit_t.digits"], work, env, run_long=False, timeout=300)
    assert info["status"] == "passed" and info["rc"] == 0
    assert "8x8x1, 10 classes" in info["stdout_tail"] and "1,274,888" in info["stdout_tail"]
    routing = check_readme.run_item(
        items["zoo routing --channels 1024 --out dtr_mask.png"], work, env, run_long=False, timeout=300
    )
    assert routing["status"] == "passed" and (work / "dtr_mask.png").stat().st_size > 0
    long = check_readme.run_item(
        items["zoo train dit_t_dtr_uw_k5 --data digits --steps 2000 --out runs/digits"], work, env, False, 1
    )
    assert long["status"] == "skipped" and "--all" in long["reason"]
    assert check_readme.shell_command("make demo").endswith("STAMP= demo")


def test_the_committed_readme_record_is_of_this_readme_and_has_no_failure():
    record = json.loads((ROOT / "benchmarks" / "results" / "readme_check.json").read_text())
    readme = (ROOT / "README.md").read_bytes()
    assert record["readme_sha256"] == hashlib.sha256(readme).hexdigest()
    assert record["counts"].get("failed", 0) == 0 and record["counts"]["passed"] >= 8
    for item in record["items"]:
        assert item["status"] in ("passed", "skipped"), item["text"]
        assert item["status"] == "passed" or item["reason"], item["text"]


def test_every_full_training_run_of_the_readme_is_long_whatever_its_budget():
    # a training command with a budget of thousands of steps is never run as a short item
    for steps in (1000, 2000, 8000, 16000, 400000):
        cls, reason = check_readme.classify(
            f"zoo train sit_t_p4_dtr --data mnist --steps {steps} --out runs/x"
        )
        assert cls == check_readme.LONG and "training run" in reason, steps
    assert check_readme.classify("zoo train dit_t --data digits --steps 20 --out runs/x")[0] == "short"
    items = check_readme.parse_readme((ROOT / "README.md").read_text())
    trains = [i for i in items if i.kind == "bash" and re.match(r"zoo train .*--steps \d{4,}", i.text)]
    assert trains and all(i.cls in (check_readme.LONG, "skip") for i in trains)  # never run as short
