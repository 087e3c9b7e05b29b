"""What the zoo says about a model is true: shipped cards, Hub metadata, licences, describe, schedules."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

import zoo
from zoo.card import derived_license, parameter_counts, render_card, use_snippet
from zoo.cli.convert import convert_to_zoo
from zoo.hub import PACKAGE_WEIGHTS, get_pretrained_cfg
from zoo.hub.cards import pretrained_lineage, shipped_card
from zoo.hub.info import tag_overrides
from zoo.hub.shipped import shipped_entries
from zoo.model import config_from_name
from zoo.registry import parse_name
from zoo.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
SHIPPED = shipped_entries()
ROOT = Path(__file__).resolve().parents[1]


def _use_snippet(card_text: str) -> str:
    match = re.search(r"## Use\n\n```python\n(.*?)```", card_text, re.S)
    assert match, "the card has no Use snippet"
    return match.group(1)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_cards_use_snippet_returns_the_shipped_weights(name):
    folder = PACKAGE_WEIGHTS / SHIPPED[name]["file"]
    namespace: dict = {}
    exec(compile(_use_snippet((folder / "README.md").read_text()), f"{name}/README.md", "exec"), namespace)
    model, images = namespace["model"], namespace["images"]
    stored = load_file(str(folder / "model.safetensors"))
    own = model.net.state_dict()
    assert set(own) == set(stored)
    for key, value in stored.items():  # shipped in float16; the model holds exactly those values in float32
        assert torch.equal(own[key], value.to(own[key].dtype)), key
    assert images.shape == (3, *model.sample_shape) and torch.isfinite(images).all()


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_cards_are_what_the_generator_writes_with_hub_metadata(name):
    entry = SHIPPED[name]
    folder = PACKAGE_WEIGHTS / entry["file"]
    config = json.loads((folder / "config.json").read_text())
    text = (folder / "README.md").read_text()
    assert text == render_card(config, shipped_card(name, entry, config))  # regenerated, not hand-edited
    data = ModelCard(text).data
    assert data.library_name == "dit-mtl-zoo" and data.license == "apache-2.0"
    assert {"diffusion", "dit-mtl-zoo", "dit"} <= set(data.tags)
    assert data.base_model is None  # trained from scratch
    tag = name.split(".")[1]
    assert data.datasets == ({"mnist": ["ylecun/mnist"]}.get(tag))  # digits has no Hub dataset id
    metrics = {r.metric_type: r.metric_value for r in data.eval_results}
    assert (
        metrics["fid"] == entry["results"]["fid"]
        and metrics["class_accuracy"] == entry["results"]["class_accuracy"]
    )
    assert all(r.dataset_name == entry["evaluation"]["reference"] for r in data.eval_results)
    counts = parameter_counts(config)
    assert counts["total"] == sum(v.numel() for v in load_file(str(folder / "model.safetensors")).values())
    assert f"| parameters | {counts['total']:,} (all, the fixed sin-cos pos_embed" in text


def test_derived_licence_keeps_non_commercial_weights_non_commercial():
    assert derived_license(None) == "apache-2.0"
    assert derived_license("cc-by-nc-4.0") == "cc-by-nc-4.0"
    assert derived_license("mit") == "mit"
    plain = pretrained_lineage("dit_xl_dtr_uw_k5", None)
    assert plain["license"] == "apache-2.0" and plain["base_model"] is None
    dit = pretrained_lineage("dit_xl_dtr_uw_k5", "dit_xl.in1k_256")
    assert dit["license"] == "cc-by-nc-4.0" and dit["base_model"] == "facebook/DiT-XL-2-256"
    assert pretrained_lineage("dit_xl", "in1k_512")["base_model"] == "facebook/DiT-XL-2-512"
    shipped = pretrained_lineage("dit_t_dtr_uw_k5", "dit_t.digits")
    assert shipped["license"] == "apache-2.0" and shipped["base_weights"]["name"] == "dit_t.digits"
    assert shipped["base_weights"]["sha256"] == SHIPPED["dit_t.digits"]["sha256"]
    ant = pretrained_lineage("dit_l_uw_k5", "ant_in1k_256")
    assert ant["license"] == "see the ANT repository"


def test_card_of_weights_finetuned_from_cc_by_nc_weights_says_cc_by_nc(tmp_path):
    model = zoo.create("dit_t", input_size=8, in_channels=1, num_classes=10)
    base = model.save_pretrained(
        tmp_path / "base", card={"license": "cc-by-nc-4.0", "base_model": "facebook/DiT-XL-2-256"}
    )
    assert ModelCard((base / "README.md").read_text()).data.license == "cc-by-nc-4.0"
    lineage = pretrained_lineage("dit_t_dtr", f"local-dir:{base}")
    assert lineage["license"] == "cc-by-nc-4.0" and lineage["base_model"] == "facebook/DiT-XL-2-256"
    child = model.save_pretrained(tmp_path / "child", card={**lineage, "load_name": f"local-dir:{tmp_path}"})
    data = ModelCard((child / "README.md").read_text()).data
    assert data.license == "cc-by-nc-4.0" and data.base_model == "facebook/DiT-XL-2-256"
    # an unknown licence is not silently Apache: it is "other" with its name
    other = model.save_pretrained(tmp_path / "other", card={"license": "see the ANT repository"})
    data = ModelCard((other / "README.md").read_text()).data
    assert data.license == "other" and data.license_name == "see-the-ant-repository"


def test_trainer_card_carries_the_licence_of_its_pretrained_weights(tmp_path):

    tiny = {"hidden_size": 32, "depth": 2, "num_heads": 2}
    base = zoo.create("dit_t", input_size=8, in_channels=1, num_classes=10, **tiny)
    folder = base.save_pretrained(tmp_path / "base", card={"license": "cc-by-nc-4.0"})
    config = TrainConfig(
        model="dit_t_dtr_uw_k5",
        steps=1,
        batch=10,
        out=str(tmp_path / "run"),
        sample_steps=2,
        sample_n=10,
        ckpt_every=1,
        log_every=1,
        progress=False,
        pretrained=f"local-dir:{folder}",
    )
    summary = Trainer(config).fit()
    card = ModelCard((Path(summary["final_dir"]) / "README.md").read_text())
    assert card.data.license == "cc-by-nc-4.0"
    assert f"local-dir:{folder}" in card.text
    scratch = render_card(base.config, {"load_name": "local-dir:x", **pretrained_lineage("dit_t", None)})
    assert ModelCard(scratch).data.license == "apache-2.0"


def test_use_snippet_asks_for_the_weights_of_registry_names_only():

    assert "zoo.create('dit_t.digits', pretrained=True)" in use_snippet("dit_t.digits")
    assert "zoo.create('local-dir:runs/x/final')" in use_snippet("local-dir:runs/x/final")


# ------------------------------------------------------------------------------------------ describe


def test_describe_reports_the_tagged_models_real_configuration():
    info = zoo.describe("dit_t.digits")
    kwargs = info["backbone_kwargs"]
    assert (kwargs["input_size"], kwargs["in_channels"], kwargs["num_classes"]) == (8, 1, 10)
    stored = load_file(str(PACKAGE_WEIGHTS / "dit_t.digits" / "model.safetensors"))
    total = sum(v.numel() for v in stored.values())
    assert info["parameters"] == total == 1_274_888
    assert info["trainable_parameters"] == total - stored["pos_embed"].numel() == 1_272_840
    assert info["pretrained"] == "dit_t.digits"
    model = zoo.create("dit_t.digits", pretrained=True)
    assert info["parameters"] == sum(p.numel() for p in model.net.parameters())
    mnist = zoo.describe("dit_t_p4_dtr.mnist")["backbone_kwargs"]
    assert (mnist["input_size"], mnist["patch_size"]) == (28, 4)


def test_describe_counts_parameters_like_the_size_table():
    untagged = zoo.describe("dit_t")
    assert untagged["parameters"] == 1_436_960  # 32x32x4, 1000 classes, pos_embed included: the table's 1.44M
    assert untagged["parameters"] - untagged["trainable_parameters"] == 256 * 128  # 256 tokens x 128 wide
    readme = (ROOT / "README.md").read_text()
    assert "| DiT-T (ours, demos and tests) | 128 | 4 | 4 | 1.44M |" in readme
    assert "fixed sin-cos `pos_embed`" in readme


# -------------------------------------------------------------------------------------- schedules

#: the noise schedule each external weight was trained and evaluated with, from its authors' released
#: code (see zoo/hub/pretrained.py's docstring for the lines read)
RELEASED_SCHEDULES = {
    "dit_xl.in1k_256": "linear",
    "dit_xl.in1k_512": "linear",
    "dit_l_uw_k5.ant_in1k_256": "cosine",
    "dit_s_nash_k5.ant_in1k_256": "cosine",
    "dit_s_uw_k5.ant_in1k_256": "cosine",
    "adm_64.in1k": "cosine",
    "adm_256.uncond": "linear",
    "sit_xl.in1k_256": "linear",  # the flow process's path: SiT's linear interpolant
}


def test_external_weights_use_the_schedule_they_were_trained_with():

    external = [n for n in zoo.list_pretrained() if get_pretrained_cfg(n).format != "zoo"]
    assert sorted(external) == sorted(RELEASED_SCHEDULES)  # a new external weight must be checked here

    for name, schedule in RELEASED_SCHEDULES.items():
        assert get_pretrained_cfg(name).overrides["schedule"] == schedule, name
        parsed = parse_name(name)  # what zoo.create(name) and zoo.describe(name) build
        assert config_from_name(parsed, **tag_overrides(parsed)[1])["diffusion"]["schedule"] == schedule, name
    assert zoo.describe("adm_64.in1k")["diffusion"]["schedule"] == "cosine"
    (ant_weights,) = zoo.describe("dit_s_nash_k5")["weights"]
    assert ant_weights["schedule"] == "cosine" and "squaredcos_cap_v2" in ant_weights["description"]
    ant = get_pretrained_cfg("dit_l_uw_k5.ant_in1k_256")
    assert "Cosine noise schedule (squaredcos_cap_v2" in ant.description


def test_a_converted_ant_checkpoint_gets_the_cosine_schedule(tmp_path):

    net = zoo.create("dit_t", input_size=8, in_channels=1, num_classes=10).net
    torch.save({"ema": net.state_dict(), "model": net.state_dict()}, tmp_path / "ant.pt")
    out = convert_to_zoo(str(tmp_path / "ant.pt"), str(tmp_path / "ant"), name="dit_t_uw_k5", fmt="ant")
    assert json.loads((out / "config.json").read_text())["diffusion"]["schedule"] == "cosine"
    assert zoo.create(f"local-dir:{out}").config["diffusion"]["schedule"] == "cosine"
    plain = convert_to_zoo(str(tmp_path / "ant.pt"), str(tmp_path / "plain"), fmt="dit_original")
    assert json.loads((plain / "config.json").read_text())["diffusion"]["schedule"] == "linear"


def test_an_unmeasured_cards_snippet_samples_with_its_own_processs_solver():
    """Without a measured protocol the snippet names the default solver of the weights' process (a flow
    model has no `ddpm` solver; the shipped-card test above executes every shipped snippet)."""
    for name in ("sit_t", "dit_t"):
        model = zoo.create(name)
        snippet = _use_snippet(render_card(model.config, {"name": name, "load_name": name}))
        assert f"sampler={model.solvers[0]!r}" in snippet, snippet
    assert zoo.create("sit_t").solvers[0] == "euler"
