"""`zoo push`, `DiffusionModel.push_to_hub` and `zoo.layout.push_folder` against a loopback fake Hub.

The real `huggingface_hub` client (HfApi.create_repo + upload_folder, then hf_hub_download) talks
HTTP to `tests.fakehub.FakeHub`; nothing of huggingface_hub is mocked. The client's default
endpoint is pointed at a closed loopback port, so a push that ignored HF_ENDPOINT would fail here
instead of reaching the public Hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import zoo
from tests.fakehub import FakeHub
from zoo.cli import main
from zoo.layout import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, push_folder

DIGITS = {"input_size": 8, "in_channels": 1, "num_classes": 10}
CLOSED = "http://127.0.0.1:9"


def tiny(name: str = "dit_t"):
    torch.manual_seed(0)
    return zoo.create(name, **DIGITS)


@pytest.fixture
def online(tmp_path, monkeypatch):
    """Lift the suite's HF_HUB_OFFLINE=1 for one test, with a fresh cache, no saved token and HF_TOKEN set."""
    import huggingface_hub.constants as hf_constants

    # huggingface_hub reads these at import time: patch its constants, not only the environment.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    # default endpoint -> a closed loopback port: what ignores HF_ENDPOINT fails here, never reaches the Hub
    monkeypatch.setattr(hf_constants, "ENDPOINT", CLOSED)
    monkeypatch.setattr(
        hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", CLOSED + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
    for var in ("HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_write_token")


@pytest.fixture
def hub(online, tmp_path, monkeypatch):
    """A running FakeHub that HF_ENDPOINT points at."""
    with FakeHub(tmp_path / "hub") as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        yield fake


def assert_same_model(pulled, model) -> None:
    theirs, ours = pulled.net.state_dict(), model.net.state_dict()
    assert theirs.keys() == ours.keys()
    for key, value in ours.items():
        assert torch.equal(theirs[key], value), key
    assert pulled.config == model.config


def hub_file(repo: str, filename: str) -> Path:
    import os

    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo, filename, endpoint=os.environ["HF_ENDPOINT"]))


def test_push_folder_round_trips_weights_config_and_card(hub, tmp_path):
    model = tiny()
    folder = model.save_pretrained(tmp_path / "weights", card={"description": "pushed by a test"})
    url = push_folder(folder, "org/tiny-dit")
    assert url.startswith(f"{hub.endpoint}/org/tiny-dit/commit/") and url.endswith(hub.heads["org/tiny-dit"])

    assert hub.repos["org/tiny-dit"] == {"name": "tiny-dit", "organization": "org", "visibility": "public"}
    (commit,) = hub.commits
    assert commit["header"]["summary"] == "Upload model" and commit["revision"] == "main"
    assert set(commit["files"]) == {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME}
    for name, data in commit["files"].items():
        assert data == (folder / name).read_bytes(), name

    pulled = zoo.create("hf-hub:org/tiny-dit", pretrained=True)
    assert_same_model(pulled, model)
    assert json.loads(hub_file("org/tiny-dit", CONFIG_NAME).read_text()) == model.config
    card = hub_file("org/tiny-dit", CARD_NAME).read_text()
    assert card == (folder / CARD_NAME).read_text() and "pushed by a test" in card


def test_model_push_to_hub_round_trips(hub):
    model = tiny("dit_t_dtr")
    url = model.push_to_hub("org/tiny-dtr", card={"description": "via push_to_hub"}, private=True)
    assert url == f"{hub.endpoint}/org/tiny-dtr/commit/{hub.heads['org/tiny-dtr']}"
    assert hub.repos["org/tiny-dtr"]["visibility"] == "private"
    assert hub.commits[-1]["header"]["summary"] == "Upload model"

    pulled = zoo.create("hf-hub:org/tiny-dtr", pretrained=True)
    assert_same_model(pulled, model)
    assert pulled.net.router is not None
    assert "via push_to_hub" in hub_file("org/tiny-dtr", CARD_NAME).read_text()

    # a second push to the existing repo (create_repo answers 409, exist_ok) makes a new commit
    model.push_to_hub("org/tiny-dtr", commit_message="again")
    assert [c["header"]["summary"] for c in hub.commits] == ["Upload model", "again"]


def test_cli_push_prints_the_commit_url(hub, tmp_path, capsys):

    folder = tiny().save_pretrained(tmp_path / "weights")
    assert main(["push", str(folder), "org/from-cli"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"{hub.endpoint}/org/from-cli/commit/{hub.heads['org/from-cli']}"
    assert (tmp_path / "hub" / "org" / "from-cli" / WEIGHTS_NAME).read_bytes() == (
        folder / WEIGHTS_NAME
    ).read_bytes()


@pytest.mark.parametrize("missing", [WEIGHTS_NAME, CONFIG_NAME])
def test_incomplete_folder_is_refused_before_any_request(hub, tmp_path, capsys, missing):

    folder = tiny().save_pretrained(tmp_path / "weights")
    (folder / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        push_folder(folder, "org/incomplete")
    assert main(["push", str(folder), "org/incomplete"]) == 2
    assert missing in capsys.readouterr().err
    assert hub.requests == [] and not hub.repos


def test_push_without_token_is_a_clear_error(hub, tmp_path, monkeypatch, capsys):

    monkeypatch.delenv("HF_TOKEN")
    model = tiny()
    folder = model.save_pretrained(tmp_path / "weights")
    with pytest.raises(PermissionError, match="HF_TOKEN.*hf auth login.*nothing was uploaded"):
        push_folder(folder, "org/no-token")
    with pytest.raises(PermissionError, match="org/no-token.*token"):
        model.push_to_hub("org/no-token")
    assert main(["push", str(folder), "org/no-token"]) == 2
    assert "needs a Hugging Face token" in capsys.readouterr().err
    assert hub.requests == []


def test_token_rejected_by_the_hub_is_a_401(online, tmp_path, monkeypatch):
    from huggingface_hub.errors import HfHubHTTPError

    with FakeHub(tmp_path / "strict-hub", token="hf_right") as strict:
        monkeypatch.setenv("HF_ENDPOINT", strict.endpoint)
        monkeypatch.setenv("HF_TOKEN", "hf_wrong")
        folder = tiny().save_pretrained(tmp_path / "weights")
        with pytest.raises(HfHubHTTPError, match="401") as info:
            push_folder(folder, "org/denied")
        assert info.value.response.status_code == 401
        assert ("POST", "/api/repos/create") in strict.requests and not strict.commits
        assert push_folder(folder, "org/denied", token="hf_right").startswith(
            f"{strict.endpoint}/org/denied/commit/"
        )
