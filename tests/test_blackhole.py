"""Black-hole imaging operator: EHT coverage, DFT against ehtim, closure physics, noise, chi^2.
Gradient and batching: the shared tests (tests/test_operators.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.registry import bh_ring as ring
from utils.rng import BatchRNG

pytest.importorskip("ehtim")

ROOT = Path(__file__).resolve().parents[1]
ARRAY = ROOT / "data" / "eht" / "EHT2017_m87.txt"


@pytest.fixture(scope="module")
def op():
    from inverse_problems.blackhole import BlackHoleImaging

    return BlackHoleImaging(array_file=str(ARRAY), flux_scale=0.004)


def test_coverage_and_minimal_closure_sets_match_ehtim(op):
    """837 visibilities; as many closures as ehtim's minimal sets (508 phases, 427 amplitudes),
    each set linearly independent as combinations of baseline phases / log amplitudes."""
    import ehtim as eh

    assert op.sizes == (837, 508, 427, 1)
    arr = eh.array.load_txt(str(ARRAY))
    obs = arr.obsdata(12.513728717, 12.39112324, 230e9, 2e9, 60, 600, 0, 24, mjd=57849)
    with np.errstate(all="ignore"):
        assert len(obs.bispectra(count="min")) == 508
        assert len(obs.c_amplitudes(count="min")) == 427
    from inverse_problems.eht import simulate_coverage

    again = simulate_coverage(ARRAY)  # from the per-user cache this time
    assert again.stations == op.coverage.stations
    for k in ("time", "t1", "t2", "u", "v", "sigma"):
        np.testing.assert_array_equal(getattr(again, k), getattr(op.coverage, k))
    m = op.sizes[0]
    for index, sign in ((op.cp_index, op.cp_sign), (op.ca_index, op.ca_sign)):
        design = torch.zeros(len(index), m, dtype=torch.float64)
        design.scatter_add_(1, index, sign)
        assert int(torch.linalg.matrix_rank(design)) == len(index)


def test_dft_matches_ehtim_to_round_off(op):
    from ehtim.observing.obs_helpers import ftmatrix

    cov = op.coverage
    ours = torch.complex(*op.dft.T.reshape(2, len(cov), -1)).numpy()
    theirs = ftmatrix(op.psize, 64, 64, np.stack([cov.u, cov.v], 1))
    assert np.abs(ours - theirs).max() < 1e-13


def test_closures_are_invariant_to_station_gains(op):
    """Closure phases do not see station phase errors and log closure amplitudes do not see
    station amplitude errors (the reason to image from them); amplitudes do."""
    x = ring()[None].repeat(2, 1, 1, 1)
    vis = op.visibilities(x)
    gains = op._station_gains(BatchRNG.for_items(0, range(2), 0), 2, x.device)
    (cp0, lca0), (cp1, lca1) = op.closures(vis), op.closures(vis * gains)
    wrapped = torch.atan2(torch.sin(cp1 - cp0), torch.cos(cp1 - cp0))
    assert float(wrapped.abs().max()) < 1e-10
    assert float((lca1 - lca0).abs().max()) < 1e-10
    assert float(((vis * gains).abs() / vis.abs() - 1).abs().mean()) > 0.05


def test_true_image_has_unit_reduced_chi2_under_thermal_noise(op):
    """Measured over 4 noise draws: chi2_amp 1.003, chi2_cp 0.988, chi2_lca 1.019."""
    x = ring()[None].repeat(4, 1, 1, 1)
    obs = op({"target": x}, BatchRNG.for_items(0, range(4), 0))
    chi_amp, chi_cp, chi_lca, _ = op.chi2_terms(op.forward(x), obs)
    for chi in (chi_amp, chi_cp, chi_lca):
        assert abs(float(chi.mean()) - 1) < 0.1
    # an image that is not the source is far from the data
    other = ring(radius=30.0, angle=3.0)[None]
    chi_wrong = op.chi2_terms(op.forward(other.repeat(4, 1, 1, 1)), obs)
    assert float(chi_wrong[1].mean()) > 10 and float(chi_wrong[2].mean()) > 10


def test_eht_noise_corrupts_amplitudes_not_closures(op):
    x = ring()[None]
    obs = op({"target": x}, BatchRNG.for_items(0, [0], 0))
    op_eht = type(op).__new__(type(op))
    op_eht.__dict__.update(op.__dict__, noise_type="eht")
    obs_eht = op_eht({"target": x}, BatchRNG.for_items(0, [0], 0))
    chi = op.chi2_terms(op.forward(x), obs_eht)
    assert float(chi[0]) > 20  # amplitudes carry the gain errors (gain_std 0.1)
    assert abs(float(chi[1]) - 1) < 0.2 and abs(float(chi[2]) - 1) < 0.2
    assert obs.y.shape == obs_eht.y.shape == (1, 837 + 508 + 427 + 1)


def test_observation_time_ratio_and_bad_settings(op):
    """The first half of the time stamps (the paper's sparser settings): 616 visibilities."""
    from inverse_problems.blackhole import BlackHoleImaging

    half = BlackHoleImaging(array_file=str(ARRAY), observation_time_ratio=0.5)
    stamps = len(np.unique(op.coverage.time))
    assert len(np.unique(half.coverage.time)) == math.ceil(stamps / 2)
    assert half.sizes[0] < 837 and half.sizes[1] < 508 and half.sizes[2] < 427
    with pytest.raises(ValueError, match="noise_type"):
        BlackHoleImaging(array_file=str(ARRAY), noise_type="thermal")
    with pytest.raises(FileNotFoundError, match="station table"):
        BlackHoleImaging(array_file="missing.txt")
    assert math.isfinite(half.psize)


def test_generated_images_and_lmdb_round_trip(tmp_path):
    """Generated crescents: non-negative, peak 1, a ring (bright annulus, dimmer centre); the
    reference's float64 layout reads back, normalized per image to [-1, 1], ids honoured."""
    from training.blackhole import BlackHole, generate
    from training.dataset import write_lmdb

    images = generate(6, 32, seed=4)
    assert images.shape == (6, 1, 32, 32) and images.dtype == np.float64
    assert images.min() >= 0 and np.allclose(images.max(axis=(1, 2, 3)), 1)
    c = (np.arange(32) - 15.5) * 5.0  # uas
    r = np.hypot(*np.meshgrid(c, c, indexing="ij"))
    annulus, centre = images[:, 0, (r > 12) & (r < 30)].mean(1), images[:, 0, r < 6].mean(1)
    assert (annulus > 2 * centre).all()
    write_lmdb(tmp_path / "bh", list(images), dtype=np.float64)
    ds = BlackHole(tmp_path / "bh", resolution=32, original_resolution=32, id_list="3-5")
    item = ds[1]["target"]
    assert item.shape == (1, 32, 32) and float(item.max()) == 1.0 and float(item.min()) >= -1
    torch.testing.assert_close(
        item.double(), torch.from_numpy(2 * images[4] - 1), atol=1e-6, rtol=0
    )
    small = BlackHole(tmp_path / "bh", resolution=16, original_resolution=32)[0]["target"]
    assert small.shape == (1, 16, 16) and float(small.max()) == 1.0
    torch.manual_seed(0)
    aug = BlackHole(tmp_path / "bh", 32, 32, random_flip=True, zoom_in_out=True)
    assert aug[0]["target"].shape == (1, 32, 32)
    with pytest.raises(ValueError, match="original_resolution"):
        BlackHole(tmp_path / "bh", resolution=32, original_resolution=64)[0]


def test_evaluator_alignment_blur_labels_and_chi2(op):
    """A sub-pixel-shifted copy of the truth scores far better after alignment than before; the
    blurred PSNRs carry their own FWHM (more blur, higher PSNR for a noisy image); chi^2 of the
    truth is about 1 (1 is best)."""
    from eval import BlackHole, shift_image

    target = ((ring() + 1) / 2)[None]  # unnormalized (1, 1, 64, 64)
    moved = shift_image(target[:, 0], torch.tensor([2.3]), torch.tensor([-1.7]))[:, None]
    g = torch.Generator().manual_seed(0)
    noisy = target + 0.05 * torch.randn(target.shape, dtype=torch.float64, generator=g)
    obs = op({"target": 2 * target - 1}, BatchRNG.for_items(0, [0], 0))
    ev = BlackHole(op, shift_steps=31)
    values = ev.evaluate(torch.cat([moved, noisy]), target, obs)
    unaligned = 10 * math.log10(1 / float((moved - target).square().mean()))
    assert values["psnr"] > unaligned + 15 and values["psnr"] > 40
    assert values["blur_psnr_20"] > values["blur_psnr_10"] > values["psnr_mean"]
    assert {"blur_psnr_10", "blur_psnr_15", "blur_psnr_20", "chi2_cp_mean"} <= set(values)
    truth = ev.evaluate(target, target, obs)
    assert 1 <= truth["chi2_cp"] < 1.2 and 1 <= truth["chi2_logcamp"] < 1.2
    with pytest.raises(ValueError, match="pixel_uas"):
        BlackHole()


def test_ehtim_rml_fits_the_closures(op):
    """ehtim's RML imager on one eht-noise observation of a crescent: closure chi^2 near 1 and a
    recognizable image (measured on blackhole-small items 0-1: chi2_cp 1.08, chi2_logcamp 1.13,
    aligned PSNR 26.6 dB)."""
    from algo.ehtim_rml import EhtimRML
    from eval import BlackHole

    small = type(op)(array_file=str(ARRAY), imsize=32, flux_scale=0.0125, noise_type="eht")
    target = ring(n=32)[None]
    obs = small({"target": target}, BatchRNG.for_items(0, [0], 0))

    class Net:
        shape = (1, 32, 32)

    x = EhtimRML(Net(), small, maxit=50, rounds=2).inference(obs, num_samples=2)
    assert x.shape == (2, 1, 32, 32) and torch.equal(x[0], x[1])
    values = BlackHole(small).evaluate(small.unnormalize(x[:1]), small.unnormalize(target), obs)
    assert values["chi2_cp"] < 2 and values["chi2_logcamp"] < 2 and values["psnr"] > 20, values
    gaussian = type(op)(array_file=str(ARRAY), imsize=32, noise_type="gaussian")
    with pytest.raises(ValueError, match="visibilities"):
        EhtimRML(Net(), gaussian)


def test_reads_the_reference_obs_uvfits_and_gt_fits(tmp_path):
    """root/{obs.uvfits, gt.fits} as the reference ships them: the coverage and sigmas come from
    the uvfits, flux_scale from the ground truth's peak."""
    import ehtim as eh

    from inverse_problems.blackhole import BlackHoleImaging

    arr = eh.array.load_txt(str(ARRAY))
    obs = arr.obsdata(12.513728717, 12.39112324, 230e9, 2e9, 60, 1200, 0, 24, mjd=57849)
    gt = eh.image.make_square(obs, 32, 160 * eh.RADPERUAS).add_gauss(
        0.6, (40 * eh.RADPERUAS, 40 * eh.RADPERUAS, 0, 0, 0)
    )
    obs.save_uvfits(str(tmp_path / "obs.uvfits"))
    gt.save_fits(str(tmp_path / "gt.fits"))
    op = BlackHoleImaging(root=str(tmp_path), imsize=32)
    assert op.sizes[0] == len(obs.data)
    np.testing.assert_allclose(op.coverage.u, obs.data["u"], rtol=1e-6)
    np.testing.assert_allclose(op.coverage.sigma, obs.data["sigma"], rtol=1e-6)
    assert op.flux_scale == pytest.approx(float(gt.imvec.max()), rel=1e-6)
    with pytest.raises(FileNotFoundError, match=r"obs\.uvfits"):
        BlackHoleImaging(root=str(tmp_path / "missing"))


def test_shipped_small_prior_matches_the_data():
    """Unconditional samples of checkpoints/blackhole-small.pt look like the training crescents
    (measured on 32 samples, Heun 40 steps: brightness mean 0.054, std 0.146, 3.4 % of pixels
    above half the peak, 75 % with a ring twice as bright as the centre; data 0.050, 0.143, 3.2 %;
    samples are farther from their nearest training image, 3.58, than training images are from
    each other, 3.10). Here 8 samples and 20 steps, with margins."""
    from tests.conftest import shipped_prior_samples

    x = shipped_prior_samples("blackhole-small", "blackhole-small.pt", 8, steps=20)
    f = (x + 1) / 2
    assert abs(float(f.mean()) - 0.050) < 0.015 and abs(float(f.std()) - 0.143) < 0.03
    assert abs(float((f > 0.5).float().mean()) - 0.032) < 0.015
    c = (torch.arange(32) - 15.5) * 5.0
    r = torch.sqrt(c[:, None] ** 2 + c[None, :] ** 2)
    ring_, centre = f[:, 0][:, (r > 12) & (r < 30)].mean(1), f[:, 0][:, r < 6].mean(1)
    assert float((ring_ > 2 * centre).float().mean()) >= 0.5


def test_small_problem_daps_beats_the_rml_baseline(config_factory):
    """blackhole-small through main.py with the shipped prior: tuned DAPS (4 samples, scored as
    the reference does, best over samples) against ehtim's RML imager on the same observations.
    Measured on the 10 default items -- blurred PSNR at 10 uas and closure chi^2 (cp, lca): DAPS
    best of 4 29.6 dB, 1.16, 1.13 (mean over samples 26.4 dB, 1.50, 1.48); RML 26.3 dB, 1.08,
    1.09; one DAPS sample per item 25.6 dB (3 of 10 items land in a wrong mode). Here items
    0-1."""
    from main import run

    common = ["problem=blackhole-small", "pretrain=blackhole-small", "problem.data.id_list=0-1"]
    daps = run(config_factory([*common, "algorithm=daps", "num_samples=4"]))
    rml = run(config_factory([*common, "algorithm=ehtim_rml"]))
    assert daps["nfe"] == 4 * 250 and daps["op_gradient"] == 4 * 2500 and rml["nfe"] == 0
    assert daps["blur_psnr_10"] > rml["blur_psnr_10"] or daps["chi2_cp"] < rml["chi2_cp"]
    assert daps["chi2_cp"] < 2 and daps["chi2_logcamp"] < 2, daps
