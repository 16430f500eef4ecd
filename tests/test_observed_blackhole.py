"""Measured EHT data (issue 24): uvfits files written by ehtim's simulator from rings of known
geometry, with the EHT's two-letter station codes, read as observed items (no target), imaged
through main.py and scored on the data alone (closure chi^2, REx ring fit, poor_fit)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.observed import ObservedUVFits, ring_image, write_synthetic_uvfits
from utils.results import collate
from utils.ringfit import fit_ring

ARRAY = "data/eht/EHT2017_m87.txt"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ring_files(tmp_path_factory):
    """Synthetic observations: 44 uas (inside the small prior's 34-50 uas training range) and
    64 uas (outside it), 0.6 Jy, station gains and thermal noise, codes AA, AP, JC, ..."""
    root = tmp_path_factory.mktemp("uvfits")
    out = {}
    for d in (44, 64):
        img = ring_image(32, 160.0, d, width_uas=8.0, asymmetry=0.5, position_angle_deg=200.0)
        out[d] = write_synthetic_uvfits(root / f"ring{d}.uvfits", img, 160.0, array_file=ARRAY)
    return out


def test_ring_fit_recovers_known_geometry():
    for d in (30, 44, 64):
        img = np.roll(ring_image(32, 160.0, d, asymmetry=0.5, position_angle_deg=30.0), 1, 0)
        fit = fit_ring(img, 5.0)
        assert fit.diameter_uas == pytest.approx(d, rel=0.02)  # measured: 0.2-1.3 %
        assert fit.orientation_deg == pytest.approx(30.0, abs=2)  # measured: < 0.1 deg
        assert fit.centre_uas == pytest.approx((0.0, -5.0), abs=0.3)  # one row south
        assert 0.2 < fit.asymmetry < 0.3 and 6 < fit.width_uas < 12
    with pytest.raises(ValueError, match="empty"):
        fit_ring(np.zeros((32, 32)), 5.0)


def _operator(**kw):
    from inverse_problems.blackhole import BlackHoleImaging

    args = {"imsize": 32, "fov_uas": 160.0, "prior_grid": {"imsize": 32, "fov_uas": 160}}
    return BlackHoleImaging(array_file=ARRAY, **{**args, **kw})


def test_observed_items_have_their_own_closures_and_fit_the_truth(ring_files):
    ds = ObservedUVFits([ring_files[44], ring_files[64]])
    assert len(ds) == 2 and ds.measured[0].coverage.stations[0] == "AA"
    # flux from the zero baselines (AA-AP, JC-SM) by distance, not by name: 0.6 Jy +- gains
    assert ds[0]["zero_flux"].item() == pytest.approx(0.6, rel=0.15)
    op = _operator()
    obs = op.observe(collate([ds[0], ds[1]]))
    assert obs.physics["cp_mask"].sum(1).min() > 300 and obs.physics["ca_mask"].sum(1).min() > 250
    for j, d in enumerate((44, 64)):
        x = torch.from_numpy(ring_image(32, 160.0, d, 8.0, 0.5, 200.0))
        x = op.normalize(x / x.max() * 1.0)[None, None].float()
        chi = op.chi2_terms(op.forward(x, **obs.item(j).physics), obs.item(j))
        assert 0.7 < float(chi[1]) < 1.5 and 0.7 < float(chi[2]) < 1.5  # the truth fits
    # a batch equals its items alone (padding is masked)
    alone = op.observe(collate([ds[1]]))
    x = torch.zeros(2, 1, 32, 32)
    both = op.loss(x, obs)
    assert float(op.loss(x[:1], alone)) == pytest.approx(float(both[1]), rel=1e-10)


def test_data_that_do_not_fit_are_refused(ring_files, tmp_path):
    with pytest.raises(ValueError, match="not the problem's"):
        ObservedUVFits(ring_files[44], frequency_ghz=345.0)
    with pytest.raises(ValueError, match="lacks the stations"):
        ObservedUVFits(ring_files[44], stations=["AA", "GL"])
    with pytest.raises(ValueError, match="not the prior's"):
        _operator(fov_uas=200.0)
    with pytest.raises(FileNotFoundError):
        ObservedUVFits(tmp_path / "none.uvfits")
    ds = ObservedUVFits(ring_files[44])
    item = ds[0]
    item["zero_flux"] = torch.tensor(math.nan, dtype=torch.float64)
    with pytest.raises(ValueError, match="total_flux_jy"):
        _operator().observe(collate([item]))
    assert _operator(total_flux_jy=0.5).observe(collate([item])).physics["flux_scale"].item() == (
        pytest.approx(0.5 / 48)
    )


def _run(config_factory, tmp_path, files, algorithm, *extra):
    from main import run

    cfg = config_factory(
        [
            "problem=blackhole-observed", "pretrain=blackhole-small", f"algorithm={algorithm}",
            f"problem.data.files={files}", "progress=false", *extra,
        ]
    )  # fmt: skip
    return run(cfg)


def test_ehtim_rml_images_a_file_with_station_codes(config_factory, tmp_path, ring_files):
    """The RML baseline ran on the array table's names (KeyError: 'AA' on real files)."""
    summary = _run(config_factory, tmp_path, ring_files[44], "ehtim_rml")
    res = torch.load(next(tmp_path.rglob("result_0.pt")), weights_only=True)
    assert "target" not in res
    assert {"chi2_cp", "chi2_logcamp", "poor_fit", "ring_diameter"} <= set(summary)
    assert 30 < summary["ring_diameter"] < 60
    # FITS of the samples, mean and std, in Jy on the problem's grid (scripts/observed_fits.py)
    import ehtim as eh

    from scripts.observed_fits import run_fits

    paths = run_fits(next(tmp_path.rglob("result_0.pt")).parent)
    assert [p.name for p in paths] == ["item_0_sample_0.fits", "item_0_mean.fits"]  # 1 sample
    im = eh.image.load_fits(str(paths[-1]))
    assert im.xdim == 32 and im.psize == pytest.approx(5 * math.pi / 180 / 3600e6, rel=1e-6)
    flux = float(res["physics"]["flux_scale"]) * 48.0  # the zero-baseline flux
    assert im.total_flux() == pytest.approx(flux, rel=0.1)  # measured: 0.567 vs 0.588 Jy


def test_a_result_that_does_not_fit_is_flagged(config_factory, tmp_path, ring_files):
    """DAPS with a handful of steps does not reach the data: poor_fit and a loud warning."""
    summary = _run(config_factory, tmp_path, ring_files[44], "daps", "num_samples=2",
                   "algorithm.method.annealing_scheduler_config.num_steps=5",
                   "algorithm.method.lgvd_config.num_steps=2")  # fmt: skip
    assert summary["poor_fit"] == 1.0 and summary["chi2_cp_mean"] > 3
    assert "POOR FIT" in next(tmp_path.rglob("log.txt")).read_text()


RML_44 = pytest.mark.xfail(
    strict=True,
    reason="closure-only RML (ehtim, maxit 100 x 3 rounds) fits these data (closure chi^2 1.01 / "
    "0.95) with a blurred ring 15 % too small (44 -> 37.6 uas, width 19 uas): 8 stations' "
    "closures leave the diameter to the regularizers; chi^2 near 1 cannot certify it",
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "diameter, algorithm",
    [(44, "daps"), (64, "daps"), pytest.param(44, "ehtim_rml", marks=RML_44), (64, "ehtim_rml")],
)
def test_rings_are_recovered_or_flagged(config_factory, tmp_path, ring_files, diameter, algorithm):
    """The tuned DAPS (50 x 50 steps, the blackhole-small prior, 2 samples) and the RML
    baseline: where the data are fitted (closure chi^2 below 3) the fitted diameter is within
    10 % of the truth; where not, the result is flagged. Measured: DAPS 44 uas -> 42.6 +- 2.0
    (chi^2 1.24 / 1.08), 64 uas -> 58.4 +- 3.4 flagged (chi^2 7.3 / 2.9: the prior's 34-50 uas
    range pulls it in); ehtim_rml 64 uas -> 58.6 (chi^2 0.96 / 1.11), 44 uas
    -> 37.6 (chi^2 1.01 / 0.95: a fit, but 15 % small; marked)."""
    summary = _run(config_factory, tmp_path, ring_files[diameter], algorithm, "num_samples=2")
    fitted = summary["poor_fit"] == 0
    print(diameter, {k: round(v, 3) for k, v in summary.items() if "ring" in k or "chi2" in k})
    if fitted:
        assert summary["ring_diameter"] == pytest.approx(diameter, rel=0.10)
    else:
        assert max(summary["chi2_cp_mean"], summary["chi2_logcamp_mean"]) > 3
