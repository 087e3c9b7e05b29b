"""`zoo convert`: foreign checkpoints (diffusers folder, original .pt) into the zoo layout, end to end."""

from __future__ import annotations

import pytest
import torch

import zoo
from zoo import routing
from zoo.cli import main


def _perturb(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))


def test_convert_diffusers_folder_matches_diffusers_output(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    theirs = diffusers.DiTTransformer2DModel(
        num_attention_heads=4,
        attention_head_dim=32,
        in_channels=4,
        out_channels=8,
        num_layers=4,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
        norm_eps=1e-6,
    ).eval()
    _perturb(theirs)
    # diffusers keeps one copy of the shared timestep/class embedders per block; converted checkpoints
    # hold identical copies, which the converter checks
    with torch.no_grad():
        state = theirs.state_dict()
        for key, value in state.items():
            if key.startswith("transformer_blocks.") and ".norm1.emb." in key:
                value.copy_(state["transformer_blocks.0." + key.split(".", 2)[2]])
    theirs.save_pretrained(tmp_path / "diffusers" / "transformer")
    assert main(["convert", str(tmp_path / "diffusers"), str(tmp_path / "zoo")]) == 0
    model = zoo.create(f"local-dir:{tmp_path / 'zoo'}")
    model.eval()
    x = torch.randn(3, 4, 8, 8)
    t = torch.tensor([1, 500, 999])
    y = torch.tensor([0, 3, 9])
    with torch.no_grad():
        expected = theirs(x, timestep=t, class_labels=y).sample
        ours = model.net(x, t, y)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_convert_original_train_checkpoint_prefers_ema(tmp_path):
    source = zoo.create("dit_t", input_size=8, in_channels=4, num_classes=10)
    _perturb(source.net)
    ema = {k: v.clone() for k, v in source.net.state_dict().items()}
    raw = {k: torch.zeros_like(v) for k, v in ema.items()}
    torch.save({"model": raw, "ema": ema, "opt": {}, "args": None}, tmp_path / "0400000.pt")
    assert (
        main(["convert", str(tmp_path / "0400000.pt"), str(tmp_path / "out"), "--name", "dit_t_dtr_uw_k5"])
        == 0
    )
    model = zoo.create(f"local-dir:{tmp_path / 'out'}")
    assert model.config["name"] == "dit_t_dtr_uw_k5" and model.net.num_classes == 10
    for key, value in ema.items():
        torch.testing.assert_close(model.net.state_dict()[key], value)


def test_convert_rejects_non_dit(tmp_path, capsys):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "x.pt")
    assert main(["convert", str(tmp_path / "x.pt"), str(tmp_path / "out")]) == 2
    assert "not a DiT state dict" in capsys.readouterr().err


def test_convert_dtr_checkpoint_checks_then_drops_its_stored_tables(tmp_path, capsys):

    source = zoo.create("dit_t", input_size=8, in_channels=4, num_classes=10)
    state = dict(source.net.state_dict())
    table = routing.dtr_table(128, num_tasks=1000, beta=0.8, alpha=4.0)
    for block in range(4):
        state[f"blocks.{block}.routing._unit_mapping"] = table.clone()
    torch.save({"ema": state}, tmp_path / "dtr.pt")
    assert (
        main(
            [
                "convert",
                str(tmp_path / "dtr.pt"),
                str(tmp_path / "ok"),
                "--format",
                "dtr",
                "--name",
                "dit_t_dtr",
            ]
        )
        == 0
    )
    model = zoo.create(f"local-dir:{tmp_path / 'ok'}")
    assert set(model.net.state_dict()) == set(source.net.state_dict())  # the tables are not kept
    # a checkpoint trained with another alpha does not match our table: refused, naming the key
    assert (
        main(["convert", str(tmp_path / "dtr.pt"), str(tmp_path / "bad"), "--format", "dtr", "--alpha", "2"])
        == 2
    )
    assert "blocks.0.routing._unit_mapping" in capsys.readouterr().err
