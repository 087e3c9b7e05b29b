"""The zoo layer: name grammar, create/overrides, the model object, weights layout, hashes, Hub, CLI."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

import zoo
from tests.fakehub import FakeHub
from zoo.cli import main
from zoo.hub import CorruptWeightsError, PretrainedCfg
from zoo.hub import registry as hub
from zoo.layout import sha256_of
from zoo.registry import UnknownModelError, parse_name

DIGITS = {"input_size": 8, "in_channels": 1, "num_classes": 10}


def tiny(name: str = "dit_t", **overrides):
    torch.manual_seed(0)
    return zoo.create(name, **{**DIGITS, **overrides})


# ----------------------------------------------------------------------------- grammar


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("dit_l_dtr", ("dit_l", "dtr", None, None, None, None)),
        ("dit_l_dtr_nash_k5", ("dit_l", "dtr", "nash", None, 5, "uniform")),
        ("dit_b_uw_k8_snr", ("dit_b", None, "uw", None, 8, "snr")),
        ("dit_s_p4_famo_k5", ("dit_s_p4", None, "famo", None, 5, "uniform")),
        ("dit_t_rand", ("dit_t", "rand", None, None, None, None)),
        ("dit_t_minsnr", ("dit_t", None, None, "minsnr", None, None)),
        ("dit_t_uw", ("dit_t", None, "uw", None, 5, "uniform")),
        ("dit_xl_k8_logsnr", ("dit_xl", None, None, None, 8, "logsnr")),
    ],
)
def test_grammar_parses_each_part(name, expected):
    parsed = parse_name(name)
    assert (
        parsed.backbone,
        parsed.routing,
        parsed.balancer,
        parsed.weighting,
        parsed.k,
        parsed.objective,
    ) == expected


def test_tag_and_canonical_name():
    parsed = parse_name("dit_xl.in1k_256")
    assert parsed.tag == "in1k_256" and parsed.backbone == "dit_xl" and parsed.full_name == "dit_xl.in1k_256"
    assert parse_name("dit_l_dtr_nash_k5").arch_name == "dit_l_dtr_nash_k5"


@pytest.mark.parametrize(
    "bad", ["dit_q", "dti_l_dtr", "dit_l_dtr_nahs_k5", "dit_l_k0", "dit_l_dtr_uw_nash_k5", ""]
)
def test_bad_names_raise_with_suggestions(bad):
    with pytest.raises(UnknownModelError) as info:
        parse_name(bad)
    if bad in ("dit_q", "dti_l_dtr", "dit_l_dtr_nahs_k5"):
        assert "Did you mean" in str(info.value)


def test_suggestion_names_the_close_valid_name():
    with pytest.raises(UnknownModelError, match="dit_l_dtr_nash_k5"):
        parse_name("dit_l_dtr_nahs_k5")


def test_list_models_wildcards():
    names = zoo.list_models("dit_l_dtr_*")
    assert "dit_l_dtr_nash_k5" in names and "dit_l_dtr_uw_k8_snr" in names
    assert all(n.startswith("dit_l_dtr_") for n in names)
    for name in names[:50]:  # every listed name parses back to itself
        assert parse_name(name).arch_name == name
    assert "dit_xl.in1k_256" in zoo.list_models("dit_xl*", pretrained=True)


def test_recipe_registration():
    zoo.register_recipe("digits_dtr_uw_test", "dit_t_dtr_uw_k5", **DIGITS)
    model = zoo.create("digits_dtr_uw_test")
    assert model.config["name"] == "dit_t_dtr_uw_k5" and model.net.num_classes == 10


# ----------------------------------------------------------------------------- create


def test_create_composes_parts():
    model = tiny("dit_t_dtr_nash_k5")
    assert model.net.router is not None and model.clusters.k == 5
    assert type(model.balancer).__name__.lower().startswith("nash")
    assert model.config["routing"]["name"] == "dtr"
    assert model.clusters.intervals[0][0] == 0 and model.clusters.intervals[-1][1] == 999


def test_impossible_combination_names_the_part():
    with pytest.raises(ValueError, match="routing"):
        tiny("dit_t_dtr", beta=1.5)
    with pytest.raises(ValueError, match="clustering"):
        tiny("dit_t_uw_k2000")
    with pytest.raises(UnknownModelError, match="routing"):
        tiny("dit_t", beta=0.5)
    with pytest.raises(TypeError, match="unknown override"):
        tiny("dit_t", hiden_size=3)


def test_loss_is_mean_of_cluster_losses_and_clusters_match_per_sample():
    model = tiny("dit_t_uw_k5")
    x0 = torch.randn(10, 1, 8, 8)
    y = torch.randint(0, 10, (10,))
    out = model.loss(x0, y, generator=torch.Generator().manual_seed(0))
    assert out.cluster_losses.shape == (5,)
    cluster = model.clusters.cluster_of(out.t)
    manual = torch.stack([out.per_sample[cluster == i].mean() for i in range(5)])
    torch.testing.assert_close(out.cluster_losses, manual)
    torch.testing.assert_close(out.total, manual.mean())
    # every cluster got its stratified share
    assert torch.bincount(cluster, minlength=5).tolist() == [2, 2, 2, 2, 2]


def test_backward_writes_the_uw_weighted_gradient():
    model = tiny("dit_t_uw_k5")
    model.net.eval()  # no label dropout: both evaluations see the same labels
    x0, y = torch.randn(10, 1, 8, 8), torch.randint(0, 10, (10,))
    out = model.loss(x0, y, generator=torch.Generator().manual_seed(0))
    model.backward(out)
    got = model.net.final_layer.linear.weight.grad.clone()
    # UW at s = 0: total = sum_i 0.5 * L_i / K, so the gradient is half the mean-cluster-loss gradient
    model.net.zero_grad()
    again = model.loss(x0, y, t=out.t, noise=out.noise)
    (0.5 * again.cluster_losses.mean()).backward()
    assert model.net.pos_embed.grad is None
    torch.testing.assert_close(got, model.net.final_layer.linear.weight.grad)


def test_loss_reproducible_with_same_t_and_noise():
    model = tiny("dit_t_dtr")
    model.eval()
    x0 = torch.randn(4, 1, 8, 8)
    y = torch.arange(4)
    first = model.loss(x0, y, generator=torch.Generator().manual_seed(1))
    again = model.loss(x0, y, t=first.t, noise=first.noise)
    torch.testing.assert_close(first.cluster_losses, again.cluster_losses)


def test_sample_shape_range_and_seed_determinism():
    model = tiny("dit_t")
    a = model.sample(labels=[0, 1, 2], steps=5, seed=3)
    b = model.sample(labels=[0, 1, 2], steps=5, seed=3)
    assert a.shape == (3, 1, 8, 8)
    torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- weights


def test_save_pretrained_round_trip(tmp_path):
    model = tiny("dit_t_dtr_uw_k5")
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = model.save_pretrained(tmp_path / "m", card={"description": "test"})
    assert {p.name for p in Path(out).iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    card = (Path(out) / "README.md").read_text()
    assert (
        card.startswith("---\nlibrary_name: dit-mtl-zoo")
        and sha256_of(Path(out) / "model.safetensors") in card
    )
    again = zoo.create(f"local-dir:{out}")
    assert again.config["routing"] == model.config["routing"]
    assert again.clusters.intervals == model.clusters.intervals
    for key, value in model.net.state_dict().items():
        torch.testing.assert_close(again.net.state_dict()[key], value)
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([10, 900])
    y = torch.tensor([1, 2])
    model.eval()
    again.eval()
    torch.testing.assert_close(again.net(x, t, y), model.net(x, t, y))


def test_routed_state_dict_equals_plain_so_plain_weights_finetune_into_recipe(tmp_path):
    plain = tiny("dit_t")
    out = plain.save_pretrained(tmp_path / "plain")
    routed = zoo.create("dit_t_dtr_uw_k5", pretrained=f"local-dir:{out}")
    assert routed.net.input_size if hasattr(routed.net, "input_size") else True
    assert set(routed.net.state_dict()) == set(plain.net.state_dict())
    for key, value in plain.net.state_dict().items():
        torch.testing.assert_close(routed.net.state_dict()[key], value)
    assert routed.config["backbone"]["kwargs"]["num_classes"] == 10  # taken from the weights' config


def test_different_num_classes_drops_label_table_with_warning(tmp_path):
    out = tiny("dit_t").save_pretrained(tmp_path / "plain")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = zoo.create("dit_t_dtr", pretrained=f"local-dir:{out}", num_classes=3)
    assert any("label table" in str(w.message) for w in caught)
    assert model.net.y_embedder.embedding_table.weight.shape[0] == 4


def test_different_input_size_is_an_error_unless_interpolating(tmp_path):
    out = tiny("dit_t").save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="position embedding"):
        zoo.create("dit_t", pretrained=f"local-dir:{out}", input_size=16)
    model = zoo.create("dit_t", pretrained=f"local-dir:{out}", input_size=16, interpolate_pos_embed=True)
    assert model.net.pos_embed.shape[1] == 64


def test_state_dict_pretrained_and_strictness():
    source = tiny("dit_t")
    model = zoo.create("dit_t_rand", pretrained=source.net.state_dict(), **DIGITS)
    torch.testing.assert_close(
        model.net.state_dict()["final_layer.linear.weight"],
        source.net.state_dict()["final_layer.linear.weight"],
    )
    broken = dict(source.net.state_dict())
    broken["blocks.0.attn.qkv.weight"] = broken["blocks.0.attn.qkv.weight"][:10]
    with pytest.raises(ValueError, match="blocks.0.attn.qkv.weight"):
        zoo.create("dit_t", pretrained=broken, **DIGITS)


def _register_tmp(cfg: PretrainedCfg) -> PretrainedCfg:

    hub._load_builtin_configs()
    hub._PRETRAINED.pop(cfg.name, None)
    return zoo.register_pretrained(cfg)


def test_file_and_url_sources_and_sha256(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    out = tiny("dit_t").save_pretrained(tmp_path / "w")
    weights = Path(out) / "model.safetensors"
    good = sha256_of(weights)
    _register_tmp(
        PretrainedCfg(arch="dit_t", tag="testurl", url=weights.as_uri(), sha256=good, overrides=DIGITS)
    )
    model = zoo.create("dit_t.testurl", pretrained=True)
    torch.testing.assert_close(
        model.net.state_dict()["x_embedder.proj.weight"],
        zoo.create(f"local-dir:{out}").net.state_dict()["x_embedder.proj.weight"],
    )
    # a truncated copy is detected, named with both hashes, and never loaded (nor cached)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(weights.read_bytes()[:-100])
    _register_tmp(PretrainedCfg(arch="dit_t", tag="testbad", file=str(bad), sha256=good, overrides=DIGITS))
    with pytest.raises(CorruptWeightsError) as info:
        zoo.create("dit_t.testbad", pretrained=True)
    assert str(bad) in str(info.value) and good in str(info.value) and sha256_of(bad) in str(info.value)
    _register_tmp(
        PretrainedCfg(arch="dit_t", tag="testbadurl", url=bad.as_uri(), sha256=good, overrides=DIGITS)
    )
    with pytest.raises(CorruptWeightsError):
        zoo.create("dit_t.testbadurl", pretrained=True)
    assert not list((tmp_path / "cache").glob("url/*/bad.safetensors"))


def test_truncated_safetensors_without_hash_is_a_clear_error(tmp_path):
    out = tiny("dit_t").save_pretrained(tmp_path / "w")
    weights = Path(out) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(CorruptWeightsError, match="safetensors"):
        zoo.create(f"local-dir:{out}")


def test_offline_miss_fails_fast(tmp_path, monkeypatch):
    import time

    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    _register_tmp(PretrainedCfg(arch="dit_t", tag="offline", hf_hub_id="nobody/nothing", overrides=DIGITS))
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="nobody/nothing"):
        zoo.create("dit_t.offline", pretrained=True)
    assert time.perf_counter() - start < 5


def test_fake_hub_download_end_to_end(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    repo = tmp_path / "hub" / "org" / "tiny-dit"
    out = tiny("dit_t_dtr").save_pretrained(repo)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with FakeHub(tmp_path / "hub") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        model = zoo.create("hf-hub:org/tiny-dit")
        assert any(method == "GET" and path.endswith("model.safetensors") for method, path in hub.requests)
        _register_tmp(
            PretrainedCfg(
                arch="dit_t_dtr",
                tag="fakehub",
                hf_hub_id="org/tiny-dit",
                sha256=sha256_of(Path(out) / "model.safetensors"),
                overrides=DIGITS,
            )
        )
        again = zoo.create("dit_t_dtr.fakehub", pretrained=True)
    for key, value in model.net.state_dict().items():
        torch.testing.assert_close(again.net.state_dict()[key], value)
    assert model.net.router is not None


def test_describe_reports_paper_sizes():
    info = zoo.describe("dit_xl_dtr_nash_k5")
    assert abs(info["parameters"] / 1e6 - 675.1) < 0.5
    assert abs(info["gflops"] - 118.6) < 1.0
    assert info["parts"]["routing"] == "dtr" and len(info["clusters"]) == 5
    assert any(w["license"] == "cc-by-nc-4.0" for w in zoo.describe("dit_xl")["weights"])


# ----------------------------------------------------------------------------- CLI


def test_cli_list_and_info(capsys):

    assert main(["list", "dit_s_dtr_nash_*"]) == 0
    listed = capsys.readouterr().out.split()
    assert "dit_s_dtr_nash_k5" in listed
    assert main(["info", "dit_s_dtr_nash_k5", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parts"]["mtl"] == "nash"
    assert main(["info", "dit_s_dtr_nahs_k5"]) == 2
    assert "Did you mean" in capsys.readouterr().err


def test_cli_routing_writes_heatmap_and_stats(tmp_path, capsys):

    png = tmp_path / "mask.png"
    assert main(["routing", "--channels", "1024", "--out", str(png)]) == 0
    stats = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    assert stats["always_active"] == 614 and stats["distinct_masks"] == 206  # the DTR paper's DiT-L numbers
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_affinity_saves_matrix_and_heatmap(tmp_path):

    out = tiny("dit_t").save_pretrained(tmp_path / "m")
    code = main(
        [
            "affinity",
            f"local-dir:{out}",
            "--batches",
            "1",
            "--batch",
            "8",
            "--group",
            "250",
            "--out",
            str(tmp_path / "aff"),
        ]
    )
    assert code == 0
    matrix = torch.load(tmp_path / "aff" / "affinity.pt")
    assert matrix.shape == (4, 4)
    torch.testing.assert_close(matrix.diagonal(), torch.ones(4, dtype=matrix.dtype))
    torch.testing.assert_close(matrix, matrix.T)
    assert (tmp_path / "aff" / "affinity.png").exists()
