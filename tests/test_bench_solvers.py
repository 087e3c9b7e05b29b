"""benchmarks/bench_solvers.py on another data set (`--data mnist`): its own files, its own protocol."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_solvers
from zoo.hub import PACKAGE_WEIGHTS
from zoo.hub.shipped import shipped_entries

MNIST_MODEL = "dit_t_p4.mnist"


@pytest.mark.skipif(MNIST_MODEL not in shipped_entries(), reason=f"{MNIST_MODEL} is not shipped")
def test_mnist_cells_go_to_their_own_files_with_the_mnist_protocol(tmp_path):
    (tmp_path / "solvers.json").write_text("{}")  # the digits benchmark's file is left alone
    folder = f"local-dir:{PACKAGE_WEIGHTS / MNIST_MODEL}"
    payload = bench_solvers.run(
        models=[MNIST_MODEL, folder],
        samples=10,
        seeds=[0],
        nfes=[5],
        out=tmp_path,
        data="mnist",
        target_only=True,
    )
    assert (tmp_path / "solvers.json").read_text() == "{}"
    written = json.loads((tmp_path / "solvers_mnist.json").read_text())
    assert (tmp_path / "solvers_mnist_fid_vs_nfe.png").stat().st_size > 10_000
    assert written["protocol"]["data"] == "mnist" and "mnist:test" in written["protocol"]["what"]
    cells = {(c["model"], c["solver_label"], c["nfe"]) for c in payload["cells"]}
    assert cells == {
        (m, label, nfe) for m in (MNIST_MODEL, folder) for label, nfe in bench_solvers.TARGETS["ddpm"]
    }
    # the shipped name and its folder are the same weights: the same FID, cell by cell
    by_model = {m: [c["fid"] for c in payload["cells"] if c["model"] == m] for m in (MNIST_MODEL, folder)}
    assert by_model[MNIST_MODEL] == pytest.approx(by_model[folder], rel=1e-9)
    assert all(c["fid"] > 0 and c["nfe"] in (20, 250) for c in payload["cells"])


def test_unknown_data_and_unshipped_models_are_refused_before_sampling(tmp_path):
    with pytest.raises(ValueError, match="unknown data 'cifar'"):
        bench_solvers.run(models=["x"], data="cifar", out=tmp_path)
    with pytest.raises(ValueError, match=r"no shipped weights \['sit_t_p4_zz.mnist'\]; the mnist models are"):
        bench_solvers.run(models=["sit_t_p4_zz.mnist"], data="mnist", out=tmp_path)
    assert not list(tmp_path.iterdir())
