"""Trust in what a user hands the zoo (issue 14: "Security" and "Bad input gets a clear error").

No code runs from a user's file (crafted TorchScript and pickles), every weights source is verified
(local-dir sha256), downloads are bounded and honour HF_HUB_OFFLINE (a loopback server that accepts and
never answers), a folder never shadows a registry name, and every bad config, weight, name or number is
refused up front with an error naming the file or flag, the field, what was expected and what was found.
"""

from __future__ import annotations

import json
import pickle
import socket
import struct
import subprocess
import sys
import threading
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import zoo
import zoo.eval.sampling
from tests.fakehub import FakeHub
from zoo.cli import main
from zoo.cli.fid import open_image_set
from zoo.data import LATENT_FORMAT, BadDataError, ImageFolderDataset, LatentsDataset
from zoo.eval import inception
from zoo.eval.sampling import load_model
from zoo.hub import CorruptWeightsError, PretrainedCfg
from zoo.hub import registry as hub
from zoo.hub.safeload import read_torchscript_tensors
from zoo.layout import save_safetensors, sha256_of
from zoo.registry import UnknownModelError, parse_name
from zoo.validate import ConfigError

DIGITS = {"input_size": 8, "in_channels": 1, "num_classes": 10}
MARKER = "ZOO-MARKER-CODE-RAN"

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(name: str = "dit_t", **overrides):
    torch.manual_seed(0)
    return zoo.create(name, **{**DIGITS, **overrides})


@pytest.fixture
def registered():
    """Register temporary weight configs; removed again after the test."""

    hub._load_builtin_configs()
    names = []

    def register(cfg: PretrainedCfg) -> PretrainedCfg:
        hub._PRETRAINED.pop(cfg.name, None)
        names.append(cfg.name)
        return zoo.register_pretrained(cfg)

    yield register
    for name in names:
        hub._PRETRAINED.pop(name, None)


# ============================================================================ Security: no code runs


class _Evil(torch.nn.Module):
    """A module whose TorchScript __setstate__ prints a marker: torch.jit.load runs it while opening."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weight", torch.ones(2))

    @torch.jit.export
    def __getstate__(self):
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]):
        print("ZOO-MARKER-CODE-RAN")
        self.weight = state[0]
        self.training = state[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class _Exec:
    """A pickle payload that writes a marker file when unpickled (what a hostile .pt does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _script(module: torch.nn.Module, path: Path) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        torch.jit.script(module).save(str(path))
    return path


def _jit_load(path: Path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")


def test_crafted_torchscript_runs_under_jit_load_but_never_under_the_zoo(tmp_path, capfd):
    evil = _script(_Evil(), tmp_path / "evil.pt")
    _jit_load(evil)  # the control: the file really runs its code when loaded as TorchScript
    assert MARKER in capfd.readouterr().out
    with pytest.raises(inception.InceptionWeightsError, match="unknown Inception-v3 weights layout"):
        inception.build_feature(f"inception:{evil}")
    assert main(["fid", "digits:test", "digits:test", "--feature", f"inception:{evil}", "--no-progress"]) == 2
    captured = capfd.readouterr()
    assert MARKER not in captured.out + captured.err
    assert str(evil) in captured.err


def test_torchscript_tensors_read_as_data_equal_jit_state_dict(tmp_path):
    class Inner(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 3, 3)
            self.norm = torch.nn.BatchNorm2d(3)

        def forward(self, x):
            return self.norm(self.conv(x))

    class Outer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.Sequential(Inner(), torch.nn.ReLU(), Inner().conv)
            self.register_buffer("table", torch.arange(12.0).reshape(3, 4).t())  # a non-contiguous view
            self.scale64 = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))

        def forward(self, x):
            return self.layers(x)

    torch.manual_seed(0)
    path = _script(Outer(), tmp_path / "benign.pt")
    ours = read_torchscript_tensors(path)
    reference = dict(_jit_load(path).state_dict())
    assert sorted(ours) == sorted(reference)
    for key, value in reference.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key


def test_pickles_naming_code_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(_Exec(marker)))  # the control: unpickling the payload writes the marker
    assert marker.read_text() == "ran"
    marker.unlink()
    # 1. a TorchScript archive whose data.pkl holds the payload
    scripted = _script(_Evil(), tmp_path / "scripted.pt")
    crafted = tmp_path / "crafted.pt"
    with zipfile.ZipFile(scripted) as source, zipfile.ZipFile(crafted, "w") as out:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(_Exec(marker), protocol=2)
            out.writestr(item, data)
    # 2. a torch.save zip and 3. a legacy torch.save pickle holding the payload
    saved_zip, legacy = tmp_path / "saved.pth", tmp_path / "legacy.pth"
    torch.save({"weights": _Exec(marker)}, saved_zip)
    torch.save({"weights": _Exec(marker)}, legacy, _use_new_zipfile_serialization=False)
    for path, expected in ((crafted, r"__builtin__\.exec"), (saved_zip, "refused"), (legacy, "refused")):
        with pytest.raises(inception.InceptionWeightsError, match=expected) as error:
            inception.load_inception(path)
        assert str(path) in str(error.value) and "nothing was executed" in str(error.value)
        assert not marker.exists()
    # the model weights converters read foreign pickles the same way (weights_only=True)
    with pytest.raises(Exception, match="(?i)weights.only|unsupported global|exec"):
        zoo.create("dit_t", pretrained=str(saved_zip), **DIGITS)
    assert not marker.exists()


def test_default_weights_need_their_sha256_and_load_without_torch_jit(tmp_path, monkeypatch):
    default = inception.default_weights_path()
    assert sha256_of(default) == inception.DEFAULT_SHA256

    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load was called")

    monkeypatch.setattr(torch.jit, "load", refuse)
    model = inception.load_inception()
    assert model.layout == "fid-helper" and model.sha256 == inception.DEFAULT_SHA256
    flipped = tmp_path / inception.DEFAULT_FILE
    raw = bytearray(default.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    flipped.write_bytes(bytes(raw))
    monkeypatch.setattr(inception, "default_weights_path", lambda: flipped)
    with pytest.raises(inception.InceptionWeightsError) as error:
        inception.load_inception()
    assert inception.DEFAULT_SHA256 in str(error.value) and sha256_of(flipped) in str(error.value)


# ============================================================================ Security: sources verified


def _flip_a_weight_byte(folder: Path) -> None:
    """Flip one byte in the tensor data (the header still parses: only the hash can notice)."""
    weights = folder / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0x01
    weights.write_bytes(bytes(raw))


def test_local_dir_is_checked_against_the_sha256_its_card_records(tmp_path):
    folder = Path(tiny().save_pretrained(tmp_path / "w"))
    recorded = sha256_of(folder / "model.safetensors")
    assert recorded in (folder / "README.md").read_text()
    zoo.create(f"local-dir:{folder}")  # intact: loads
    _flip_a_weight_byte(folder)
    for load in (
        lambda: zoo.create(f"local-dir:{folder}"),
        lambda: zoo.create(str(folder)),
        lambda: zoo.create("dit_t", pretrained=f"local-dir:{folder}"),
    ):
        with pytest.raises(CorruptWeightsError) as error:
            load()
        message = str(error.value)
        assert recorded in message and sha256_of(folder / "model.safetensors") in message
        assert "README.md" in message


def test_local_dir_is_checked_against_the_sha256_its_config_records(tmp_path):
    folder = Path(tiny().save_pretrained(tmp_path / "w"))
    (folder / "README.md").unlink()
    config = json.loads((folder / "config.json").read_text())
    config["sha256"] = sha256_of(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config))
    zoo.create(f"local-dir:{folder}")
    _flip_a_weight_byte(folder)
    with pytest.raises(CorruptWeightsError, match="config.json") as error:
        zoo.create(f"local-dir:{folder}")
    assert config["sha256"] in str(error.value)


# ============================================================================ Security: downloads bounded


class StalledServer:
    """Loopback TCP server that accepts connections and never answers; counts the connections."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.connections: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.connections.append(connection)

    def close(self) -> None:
        for connection in self.connections:
            connection.close()
        self.socket.close()


@pytest.fixture
def stalled():
    server = StalledServer()
    yield server
    server.close()


def _bounded(call, seconds: float = 60.0) -> BaseException | None:
    """Run `call` in a thread; a hang guard (the tests' timeouts are 1 s; 60 s means it did not stop)."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 (handed to the test)
            outcome.append(exc)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert outcome, f"still waiting on a stalled server after {seconds} s"
    return outcome[0]


@pytest.fixture
def online(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "zoo-cache"))
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "1")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")


def test_stalled_url_fails_naming_it_after_one_connection(online, stalled, registered, tmp_path):
    url = f"{stalled.url}/weights/model.safetensors"
    registered(PretrainedCfg(arch="dit_t", tag="stalledurl", url=url, overrides=DIGITS))
    error = _bounded(lambda: zoo.create("dit_t.stalledurl", pretrained=True))
    assert isinstance(error, FileNotFoundError), error
    assert url in str(error) and "no answer within 1 s" in str(error)
    assert len(stalled.connections) == 1
    assert not list((tmp_path / "zoo-cache").rglob("*.part"))  # nothing half-written is kept


def test_url_download_honours_hf_hub_offline(online, stalled, registered, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    url = f"{stalled.url}/weights/model.safetensors"
    registered(PretrainedCfg(arch="dit_t", tag="offlineurl", url=url, overrides=DIGITS))
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE") as error:
        zoo.create("dit_t.offlineurl", pretrained=True)
    assert url in str(error.value) and not stalled.connections


def test_stalled_hf_endpoint_fails_naming_the_url(online, stalled, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", stalled.url)
    error = _bounded(lambda: zoo.create("hf-hub:org/stalled"))
    assert isinstance(error, TimeoutError), error
    assert f"{stalled.url}/org/stalled/resolve/main/config.json" in str(error)
    assert "HF_HUB_ETAG_TIMEOUT" in str(error) and len(stalled.connections) == 1


def test_stalled_hf_endpoint_falls_back_to_the_cache(online, stalled, tmp_path, monkeypatch):

    model = tiny("dit_t_dtr")
    model.save_pretrained(tmp_path / "hub" / "org" / "cached")
    with FakeHub(tmp_path / "hub") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        zoo.create("hf-hub:org/cached")
    monkeypatch.setenv("HF_ENDPOINT", stalled.url)
    again = _bounded(lambda: zoo.create("hf-hub:org/cached"))
    assert again is None  # cached files are used when the endpoint stalls (huggingface_hub's own fallback)


# ============================================================================ Security: no shadowing


def test_a_folder_here_never_shadows_a_registry_name(tmp_path, monkeypatch):
    for name in ("dit_t", "digits"):
        tiny("dit_t_dtr").save_pretrained(tmp_path / name)  # folders named like a model and a tag
    monkeypatch.chdir(tmp_path)
    registry = zoo.create("dit_t")
    assert registry.config["name"] == "dit_t" and registry.sample_shape == (4, 32, 32)
    assert registry.net.router is None
    for spec in ("./dit_t", "local-dir:dit_t", str(tmp_path / "dit_t"), tmp_path / "dit_t"):
        loaded = zoo.create(spec)
        assert loaded.sample_shape == (1, 8, 8) and loaded.net.router is not None, spec
    shipped = zoo.create("dit_t", pretrained="digits")  # the registry's tag, not ./digits
    reference = zoo.create("dit_t.digits", pretrained=True)
    key = "x_embedder.proj.weight"
    torch.testing.assert_close(shipped.net.state_dict()[key], reference.net.state_dict()[key])

    assert load_model("dit_t").net.router is None  # `zoo sample dit_t` takes the registry's weights
    with pytest.raises(UnknownModelError, match="non-empty"):
        zoo.create("")
    tiny().save_pretrained(tmp_path / "dit_q")
    with pytest.raises(UnknownModelError, match=r"\./dit_q or local-dir:dit_q"):
        zoo.create("dit_q")


# ============================================================================ Bad input: config.json


def _mutate(config: dict, path: str, value) -> dict:
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return config


CONFIG_CASES = [
    # (field to change, new value, words the error must hold)
    ("backbone.kwargs.input_size", 0, ["backbone.kwargs.input_size", "int >= 1", "0"]),
    ("backbone.kwargs.input_size", -8, ["backbone.kwargs.input_size", "int >= 1", "-8"]),
    ("backbone.kwargs.input_size", "8", ["backbone.kwargs.input_size", "int >= 1", "'8'", "str"]),
    ("backbone.kwargs.in_channels", 0, ["backbone.kwargs.in_channels", "int >= 1"]),
    ("backbone.kwargs.in_channels", 1.5, ["backbone.kwargs.in_channels", "1.5", "float"]),
    ("backbone.kwargs.num_heads", True, ["backbone.kwargs.num_heads", "True", "bool"]),
    ("backbone.kwargs.num_classes", -1, ["backbone.kwargs.num_classes", "int >= 0"]),
    ("backbone.kwargs.mlp_ratio", float("nan"), ["backbone.kwargs.mlp_ratio", "finite"]),
    ("backbone.kwargs.class_dropout_prob", 2.0, ["class_dropout_prob", "[0, 1]"]),
    ("backbone.kwargs.bogus", 1, ["backbone.kwargs", "bogus"]),
    ("backbone.kwargs", [8, 1], ["backbone.kwargs", "object"]),
    ("backbone.arch", "unet", ["backbone.arch", "'unet'"]),
    ("backbone", KeyError, ["backbone", "missing"]),
    ("diffusion", KeyError, ["diffusion", "missing"]),
    ("diffusion", "linear", ["diffusion", "an object", "'linear'"]),
    ("diffusion.num_timesteps", 0, ["diffusion.num_timesteps", "int >= 1"]),
    ("diffusion.learn_sigma", "yes", ["diffusion.learn_sigma", "true or false", "'yes'"]),
    ("clustering.k", 0, ["clustering.k", "[1, 1000]", "0"]),
    ("clustering.k", 5000, ["clustering.k", "5000"]),
    ("mtl", KeyError, ["mtl", "missing"]),
    ("mtl.name", 3, ["mtl.name", "string"]),
    ("routing", 7, ["routing", "object or null"]),
    ("config_version", 2, ["config_version", "1", "2"]),
    ("config_version", KeyError, ["config_version", "None"]),
    ("backbone.kwargs.learn_sigma", False, ["backbone.kwargs.learn_sigma", "diffusion.learn_sigma"]),
]


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    return Path(tiny().save_pretrained(tmp_path_factory.mktemp("saved") / "w"))


@pytest.mark.parametrize(
    ("field", "value", "words"), CONFIG_CASES, ids=[f"{c[0]}={c[1]!r}" for c in CONFIG_CASES]
)
def test_config_json_is_validated_naming_file_field_expected_and_found(
    saved_folder, tmp_path, field, value, words
):
    import shutil

    folder = tmp_path / "w"
    shutil.copytree(saved_folder, folder)
    config = _mutate(json.loads((folder / "config.json").read_text()), field, value)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError) as error:
        zoo.create(f"local-dir:{folder}")
    message = str(error.value)
    assert str(folder / "config.json") in message and "expected" in message and "found" in message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("text", ["[1, 2]", '"dit_t"', "null", "3"])
def test_config_json_that_is_not_an_object(saved_folder, tmp_path, text):
    import shutil

    folder = tmp_path / "w"
    shutil.copytree(saved_folder, folder)
    (folder / "config.json").write_text(text)
    with pytest.raises(ConfigError, match="a JSON object") as error:
        zoo.create(f"local-dir:{folder}")
    assert str(folder / "config.json") in str(error.value)


def test_config_json_that_is_not_json(saved_folder, tmp_path):
    import shutil

    folder = tmp_path / "w"
    shutil.copytree(saved_folder, folder)
    (folder / "config.json").write_text('{"backbone": ')
    with pytest.raises(ValueError, match="not valid JSON") as error:
        zoo.create(f"local-dir:{folder}")
    assert str(folder / "config.json") in str(error.value)


def test_learn_sigma_that_does_not_match_the_weights(tmp_path):
    folder = Path(tiny().save_pretrained(tmp_path / "w"))  # learned sigma: 2 x 4 x 1 outputs per token
    config = json.loads((folder / "config.json").read_text())
    config["diffusion"]["learn_sigma"] = False
    config["backbone"]["kwargs"]["learn_sigma"] = False
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="learn_sigma") as error:
        zoo.create(f"local-dir:{folder}")
    assert str(folder / "config.json") in str(error.value) and "8 outputs" in str(error.value)


# ============================================================================ Bad input: weights


@pytest.mark.parametrize(
    ("spoil", "words"),
    [
        (lambda t: t.index_fill(0, torch.tensor([0]), float("nan")), ["NaN or inf", "128 of 1024 values"]),
        (lambda t: t.index_fill(0, torch.tensor([0]), float("inf")), ["NaN or inf"]),
        (lambda t: torch.full_like(t, -float("inf")), ["NaN or inf"]),
        (lambda t: t.to(torch.int8), ["floating point", "int8"]),
        (lambda t: t.to(torch.bool), ["floating point", "bool"]),
    ],
    ids=["nan", "inf", "-inf", "int8", "bool"],
)
def test_weights_with_nan_inf_or_integer_dtypes_are_refused(tmp_path, spoil, words):
    model = tiny()
    state = model.net.state_dict()
    key = "final_layer.linear.weight"
    state[key] = spoil(state[key])
    folder = Path(model.save_pretrained(tmp_path / "w", state_dict=state))  # card hash of the spoilt file
    for load in (
        lambda: zoo.create(f"local-dir:{folder}"),
        lambda: zoo.create("dit_t", pretrained=state, **DIGITS),
    ):
        with pytest.raises(ConfigError) as error:
            load()
        assert key in str(error.value)
        for word in words:
            assert word in str(error.value)


# ============================================================================ Bad input: names


@pytest.mark.parametrize("name", ["dit_t_uw_k５", "dit_t_uw_k٥", "dit_t_k５", "dit_t_uw_k05", "dit_t_uw_k0"])
def test_only_ascii_digits_in_k(name, capsys):
    with pytest.raises(UnknownModelError):
        parse_name(name)
    with pytest.raises(UnknownModelError):
        zoo.create(name)
    assert main(["info", name]) == 2
    assert name in capsys.readouterr().err


def test_zoo_info_of_an_unknown_tag_fails(capsys):
    assert main(["info", "dit_t.nonexistent"]) == 2
    assert "dit_t.nonexistent" in capsys.readouterr().err
    assert main(["info", "dit_t.digits", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "dit_t.digits" and info["backbone_kwargs"]["input_size"] == 8  # the tag's settings


def test_affinity_objective_needs_its_matrix_in_info_and_create_alike():
    with pytest.raises(ConfigError, match="affinity="):
        zoo.describe("dit_t_uw_k5_affinity")
    with pytest.raises(ConfigError, match="affinity="):
        zoo.create("dit_t_uw_k5_affinity")
    assert main(["info", "dit_t_uw_k5_affinity"]) == 2
    t = torch.arange(1000, dtype=torch.float64)
    affinity = torch.exp(-(((t[:, None] - t[None, :]) / 150.0) ** 2))  # smooth: near timesteps agree
    info = zoo.describe("dit_t_uw_k5_affinity", affinity=affinity)
    model = zoo.create("dit_t_uw_k5_affinity", affinity=affinity, **DIGITS)
    assert [list(i) for i in info["clusters"]] == [list(i) for i in model.clusters.intervals]
    assert len(info["clusters"]) == 5


AGREEMENT_NAMES = [
    "dit_t",
    "dit_t_dtr",
    "dit_t_rand",
    "dit_t_random",
    "dit_t_uw",
    "dit_t_uw_k3",
    "dit_t_dtr_nash_k5",
    "dit_t_famo_k8_snr",
    "dit_t_minsnr",
    "dit_t_uw_minsnr_k5",
    "dit_t_k5",
    "dit_t_k5_logsnr",
    "dit_t_p4_dtr",
    "dit_t.digits",
    "dit_t_dtr_uw_k5.digits",
    "dit_t_p4.mnist",
    "adm_t",
    "adm_t_uw_k5",
    "dit_t_uw_k5_affinity",
    "dit_t.nonexistent",
    "dit_t.bad tag",
    "dit_t_uw_k5_uniform",
    "dit_t_uw_nash_k5",
    "dit_t_dtr_rand",
    "dit_t_k",
    "dit_t_kk5",
    "dit_t_uw_k1001",
    "dit_t_uw_k٥",
    "dit_t_",
    "_dit_t",
    "DIT_T",
    "dit_t..digits",
    "dit_t.digits.x",
    "dit_z",
    " dit_t",
    "dit_t\n",
]


@pytest.mark.parametrize("name", AGREEMENT_NAMES)
def test_zoo_info_and_create_accept_exactly_the_same_names(name):
    def outcome(call):
        try:
            call()
            return None
        except Exception as exc:  # noqa: BLE001 (the outcome is compared)
            return exc

    described = outcome(lambda: zoo.describe(name))
    created = outcome(lambda: zoo.create(name))
    assert (described is None) == (created is None), (name, described, created)
    if described is not None:
        assert type(described) is type(created) and str(described) == str(created)


# ============================================================================ Bad input: numbers


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"input_size": 0}, "input_size"),
        ({"input_size": -1}, "input_size"),
        ({"input_size": "8"}, "input_size"),
        ({"input_size": 8.0}, "input_size"),
        ({"input_size": True}, "input_size"),
        ({"input_size": None}, "input_size"),
        ({"in_channels": 0}, "in_channels"),
        ({"in_channels": -3}, "in_channels"),
        ({"in_channels": "1"}, "in_channels"),
        ({"num_classes": -2}, "num_classes"),
    ],
)
def test_backbone_numbers_are_refused_naming_the_range(overrides, field):
    for call in (lambda: zoo.create("dit_t", **overrides), lambda: zoo.describe("dit_t", **overrides)):
        with pytest.raises(ConfigError) as error:
            call()
        message = str(error.value)
        assert f"backbone.kwargs.{field}" in message and "expected an int >=" in message
        assert repr(overrides[field]) in message


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--cfg", "nan"], ["--cfg", "finite number >= 0", "'nan'"]),
        (["--cfg", "inf"], ["--cfg", "finite"]),
        (["--cfg", "-1"], ["--cfg", ">= 0"]),
        (["--eta", "nan", "--sampler", "ddim"], ["--eta", "[0, 1]", "'nan'"]),
        (["--eta", "1.5", "--sampler", "ddim"], ["--eta", "[0, 1]"]),
        (["--n", "-1"], ["--n", "int >= 1", "-1"]),
        (["--n", "0"], ["--n", "int >= 1"]),
        (["--n", "2.5"], ["--n", "int >= 1", "'2.5'"]),
        (["--steps", "0"], ["--steps", "int >= 1"]),
        (["--batch", "0"], ["--batch", "int >= 1"]),
        (["--nrow", "0"], ["--nrow", "int >= 1"]),
    ],
)
def test_zoo_sample_refuses_bad_numbers_before_loading(argv, words, monkeypatch, capsys):

    monkeypatch.setattr(zoo.eval.sampling, "load_model", lambda name: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "dit_t.digits", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, (word, err)


def test_zoo_sample_refuses_eta_with_ddpm_before_loading(monkeypatch, capsys):

    monkeypatch.setattr(zoo.eval.sampling, "load_model", lambda name: pytest.fail("the model was loaded"))
    assert main(["sample", "dit_t.digits", "--eta", "0.5"]) == 2
    assert "--eta is a DDIM parameter" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"guidance": float("nan")}, ["guidance", "finite number >= 0", "nan"]),
        ({"guidance": float("inf")}, ["guidance", "finite"]),
        ({"guidance": -0.5}, ["guidance", ">= 0"]),
        ({"guidance": "2"}, ["guidance", "'2'"]),
        ({"sampler": "ddim", "eta": float("nan")}, ["eta", "[0, 1]", "nan"]),
        ({"sampler": "ddim", "eta": 1.5}, ["eta", "[0, 1]", "1.5"]),
        ({"sampler": "ddim", "eta": -0.1}, ["eta", "[0, 1]"]),
    ],
)
def test_model_sample_refuses_nan_guidance_and_eta_before_any_forward(kwargs, words):
    model = tiny()
    calls = []
    model.net.register_forward_pre_hook(lambda module, args: calls.append(1))
    with pytest.raises(ValueError) as error:
        model.sample([1, 2], steps=2, **kwargs)
    for word in words:
        assert word in str(error.value)
    assert not calls
    assert torch.isfinite(model.sample([1, 2], steps=2, guidance=1.5)).all()  # valid numbers still sample
    assert calls


def test_zoo_fid_refuses_bad_numbers(capsys):
    for argv, flag in (
        (["--batch", "0"], "--batch"),
        (["--limit", "-1"], "--limit"),
        (["--kid-subsets", "0"], "--kid-subsets"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["fid", "digits", "digits", *argv])
        assert exit_info.value.code == 2
        assert flag in capsys.readouterr().err


# ============================================================================ Bad input: data


def _latent_folder(folder: Path, labels: torch.Tensor, manifest: object | None = None) -> Path:

    folder.mkdir(parents=True)
    save_file(
        {"latents": torch.zeros(len(labels), 4, 2, 2), "labels": labels},
        str(folder / "shard-00000.safetensors"),
    )
    manifest = {"format": LATENT_FORMAT, "num_classes": 3} if manifest is None else manifest
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_latent_shards_with_float_labels_or_no_num_classes_are_named(tmp_path):

    good = LatentsDataset(_latent_folder(tmp_path / "good", torch.tensor([0, 1, 2])))
    assert len(good) == 3 and good[2][1].item() == 2
    with pytest.raises(BadDataError, match="float32") as error:
        LatentsDataset(_latent_folder(tmp_path / "float", torch.tensor([0.0, 1.5, 2.0])))
    assert "shard-00000.safetensors" in str(error.value) and "integer" in str(error.value)
    with pytest.raises(BadDataError, match="num_classes") as error:
        LatentsDataset(_latent_folder(tmp_path / "nonum", torch.tensor([0, 1]), {"format": LATENT_FORMAT}))
    assert "manifest.json" in str(error.value) and "missing" in str(error.value)
    for bad in ("3", 2.5, 0, True):
        with pytest.raises(BadDataError, match="num_classes"):
            folder = tmp_path / f"num{bad!r}"
            LatentsDataset(
                _latent_folder(folder, torch.tensor([0]), {"format": LATENT_FORMAT, "num_classes": bad})
            )
    with pytest.raises(BadDataError, match="JSON object"):
        LatentsDataset(_latent_folder(tmp_path / "list", torch.tensor([0]), [LATENT_FORMAT]))


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height pixels but holds almost nothing: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    return path


def test_decompression_bombs_are_skipped_and_named_like_unreadable_files(tmp_path):
    from PIL import Image

    assert 20000 * 20000 > 2 * Image.MAX_IMAGE_PIXELS > 10000 * 10000 > Image.MAX_IMAGE_PIXELS
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "a" / "good.png")
    error_bomb = _png_header(tmp_path / "a" / "bomb.png", 20000, 20000)  # PIL: DecompressionBombError
    warning_bomb = _png_header(tmp_path / "a" / "big.png", 10000, 10000)  # PIL: DecompressionBombWarning
    with pytest.warns(UserWarning) as record:
        dataset = ImageFolderDataset(tmp_path, image_size=8)
    messages = " ".join(str(w.message) for w in record)
    assert str(error_bomb) in messages and str(warning_bomb) in messages and "DecompressionBomb" in messages
    assert set(dataset.bad_files) == {str(error_bomb), str(warning_bomb)}
    assert len(dataset) == 1 and dataset[0][0].shape == (3, 8, 8)
    images = open_image_set(f"imagefolder:{tmp_path}")
    with pytest.raises(BadDataError, match="cannot be decoded") as error:
        list(images.batches(4))
    assert str(warning_bomb) in str(error.value) or str(error_bomb) in str(error.value)


def test_zoo_info_reads_weights_folders_as_create_does(saved_folder, tmp_path, capsys):
    import shutil

    assert main(["info", str(saved_folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    model = zoo.create(f"local-dir:{saved_folder}")
    assert info["parameters"] == sum(p.numel() for p in model.net.parameters())  # pos_embed included
    assert info["trainable_parameters"] == sum(p.numel() for p in model.net.parameters() if p.requires_grad)
    assert info["backbone_kwargs"]["input_size"] == 8 and info["clusters"] == [[0, 999]]
    folder = tmp_path / "w"
    shutil.copytree(saved_folder, folder)
    (folder / "config.json").write_text("[]")
    assert main(["info", f"local-dir:{folder}"]) == 2
    assert str(folder / "config.json") in capsys.readouterr().err
    with pytest.raises(ConfigError):
        zoo.create(f"local-dir:{folder}")


def test_saved_weights_are_byte_stable(tmp_path):
    """Equal tensors and metadata give one sha256 in every call and every process (safetensors alone
    orders its metadata by a hash map: two keys gave two different files for the same weights)."""
    tensors = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.ones(5, dtype=torch.float16)}
    metadata = {"format": "pt", "dtype": "float16", "library": "dit-mtl-zoo"}
    digests = {
        sha256_of(save_safetensors(tensors, tmp_path / f"w{i}.safetensors", metadata)) for i in range(12)
    }
    script = (
        "import sys, torch; from zoo.layout import save_safetensors, sha256_of; "
        "t = {'b.weight': torch.arange(6.0).reshape(2, 3), 'a.bias': torch.ones(5, dtype=torch.float16)}; "
        "m = {'format': 'pt', 'dtype': 'float16', 'library': 'dit-mtl-zoo'}; "
        "print(sha256_of(save_safetensors(t, sys.argv[1], m)))"
    )
    for i in range(2):
        out = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / f"p{i}.safetensors")],
            capture_output=True,
            text=True,
            check=True,
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1
    loaded = load_file(str(tmp_path / "w0.safetensors"))
    assert set(loaded) == set(tensors) and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    with safe_open(str(tmp_path / "w0.safetensors"), "pt") as handle:
        assert handle.metadata() == metadata
