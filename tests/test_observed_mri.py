"""Measured multi-coil k-space (issue 24): fastMRI-layout HDF5 files without a reconstruction,
coil maps by ESPIRiT from the same data, solved through main.py and scored on the data alone
(or against a reference reconstruction stored in the file)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inverse_problems.multi_coil_mri import line_mask
from training.mri import MultiCoilMRILMDBData
from training.observed import ObservedKSpace, write_fastmri_h5

DATA = "data/multi-coil-mri-small/test"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def scans(ids="0-1"):
    ds = MultiCoilMRILMDBData(DATA, image_size=(64, 64), id_list=ids)
    k = torch.stack([ds[i]["kspace"] for i in range(len(ds))]).numpy()
    truth = torch.stack([ds[i]["target"] for i in range(len(ds))])
    return k, truth


def lines() -> np.ndarray:
    """4x random lines plus 16 central calibration lines (fastMRI-like ACS for ESPIRiT)."""
    mask = line_mask(64, 4, "random", np.random.RandomState(0)).numpy()
    mask[24:40] = True
    return mask


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    k, truth = scans()
    path = tmp_path_factory.mktemp("h5") / "scan.h5"
    return write_fastmri_h5(path, k, mask=lines()), truth, k


def psnr(recon, truth):
    """PSNR (dB) of magnitudes, data range the truth's peak."""
    a, b = recon.square().sum(1).sqrt(), truth.square().sum(1).sqrt()
    return float(10 * torch.log10(b.max() ** 2 / (a - b).square().mean()))


def test_items_carry_measured_kspace_and_espirit_maps(scan_file):
    path, _, k = scan_file
    ds = ObservedKSpace(path)
    item = ds[0]
    assert "target" not in item and item["observation"].shape == (6, 64, 64, 2)
    assert item["mask"].shape == (1, 64) and int(item["mask"].sum()) == int(lines().sum())
    # the zero-filled normalization is near the full data's (the LMDB scans have scale 1)
    assert float(item["scale"]) == pytest.approx(1.0, rel=0.1)  # measured: 1.036
    y = torch.view_as_complex(item["observation"]) * item["scale"]
    assert torch.allclose(y, torch.from_numpy(k[0]).to(y.dtype) * item["mask"], atol=1e-6)


def test_kspace_that_does_not_fit_is_refused(tmp_path, scan_file):
    k, _ = scans("0")
    with pytest.raises(ValueError, match="phase encodes"):
        ObservedKSpace(write_fastmri_h5(tmp_path / "a.h5", k[..., :48]))
    narrow = line_mask(64, 4, "random", np.random.RandomState(0)).numpy()  # 5 central lines
    with pytest.raises(ValueError, match="calibration lines"):
        ObservedKSpace(write_fastmri_h5(tmp_path / "b.h5", k, mask=narrow))[0]
    with pytest.raises(ValueError, match="reference"):
        ObservedKSpace(scan_file[0], reference="reconstruction_rss")
    with pytest.raises(FileNotFoundError):
        ObservedKSpace(tmp_path / "none.h5")


def _run(config_factory, path, algorithm, *extra):
    from main import run

    return run(config_factory([
        "problem=multi-coil-mri-observed", f"algorithm={algorithm}",
        f"problem.data.files={path}", *extra,
    ]))  # fmt: skip


@pytest.mark.parametrize(
    "algorithm, extra, floor",
    [("cs_mri", [], 25.0),  # measured: 27.3, 27.5 dB (the tuned L1-wavelet)
     ("dps", [], 25.0)],  # measured: 27.7, 27.2 dB (the tuned 200 steps, 20 s)
)  # fmt: skip
def test_observed_kspace_through_main(config_factory, tmp_path, scan_file, algorithm, extra, floor):
    path, truth, _ = scan_file
    summary = _run(config_factory, path, algorithm, *extra)
    assert {"data_misfit", "relative_misfit"} <= set(summary) and "psnr" not in summary
    ds = ObservedKSpace(path)
    for i in range(2):
        res = torch.load(next(tmp_path.rglob(f"result_{i}.pt")), weights_only=True)
        assert "target" not in res and torch.isfinite(res["recon"]).all()
        value = psnr(res["recon"].double() * ds[i]["scale"], truth[i : i + 1].double())
        print(algorithm, i, round(value, 2))
        assert value > floor


def test_a_reference_reconstruction_gives_the_usual_metrics(config_factory, tmp_path):
    k, truth = scans("0")
    rss = truth.square().sum(1).sqrt().numpy()
    path = write_fastmri_h5(tmp_path / "ref.h5", k, mask=lines(), reconstruction_rss=rss)
    summary = _run(config_factory, path, "cs_mri", "problem.data.reference=reconstruction_rss")
    print("reference psnr / ssim", summary["psnr"], summary["ssim"])
    assert summary["psnr"] > 24 and "data_misfit" in summary  # measured: 27.3 dB, SSIM 0.67
