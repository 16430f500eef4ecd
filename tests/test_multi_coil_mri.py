"""Multi-coil MRI (SENSE) operator: FFT, masks, observations. Adjoint, gradient and per-item
physics: the shared tests (tests/test_operators.py)."""

from __future__ import annotations

import math

import pytest
import torch

from inverse_problems.base import Observation
from inverse_problems.multi_coil_mri import MultiCoilMRI, acs_lines, fft2c, ifft2c, line_mask
from tests.registry import line_masks as masks
from tests.registry import smooth_maps
from utils.rng import BatchRNG

F64 = torch.float64


def rand_x(rows, n, seed=1):
    return torch.randn(rows, 2, n, n, dtype=F64, generator=torch.Generator().manual_seed(seed))


def test_centered_fft_is_unitary_and_centered():
    x = torch.randn(3, 16, 16, dtype=torch.complex128)
    k = fft2c(x)
    torch.testing.assert_close(k.abs().square().sum(), x.abs().square().sum())  # Parseval
    torch.testing.assert_close(ifft2c(k), x)
    ones = torch.ones(16, 16, dtype=torch.complex128)
    dc = fft2c(ones)
    assert abs(float(dc[8, 8].real) - 16.0) < 1e-12 and float(dc.abs().sum()) == pytest.approx(16)


@pytest.mark.parametrize("R, expected_acs", [(4, 25), (8, 12)])
def test_mask_acceleration_and_acs(R, expected_acs):
    for pattern in ("random", "equispaced"):
        m = line_mask(320, R, pattern, torch.Generator().manual_seed(0))
        assert int(m.sum()) == 320 // R and acs_lines(320, R) == expected_acs
        start = (320 - expected_acs) // 2
        assert m[start : start + expected_acs].all()  # the centred calibration block
    a = line_mask(320, R, "random", torch.Generator().manual_seed(0))
    b = line_mask(320, R, "random", torch.Generator().manual_seed(1))
    assert not torch.equal(a, b)  # seeded by the generator, not a global RNG
    torch.testing.assert_close(a, line_mask(320, R, "random", torch.Generator().manual_seed(0)))


def test_operator_mask_from_seed_and_file(tmp_path):
    import numpy as np

    op = MultiCoilMRI(total_lines=64, acceleration_ratio=8, mask_seed=3)
    assert op.default_mask().shape == (1, 1, 64) and int(op.lines.sum()) == 8
    np.save(tmp_path / "m.npy", op.lines.numpy())
    again = MultiCoilMRI(
        total_lines=64, mask_fname=str(tmp_path / "m.npy"), orientation="horizontal"
    )
    torch.testing.assert_close(again.lines, op.lines)
    assert again.default_mask().shape == (1, 64, 1)


@pytest.mark.parametrize("shape", [(16, 16), (14, 10), (15, 12), (13, 11)])
def test_modulated_fft_path_equals_explicit_shifts(shape):
    """Even sizes fold the centered FFT's shifts and scaling into one k-space weight; odd sizes
    shift explicitly. Both equal mask * fft2c(S x), in float32 and float64, and stay adjoint."""
    H, W = shape
    op = MultiCoilMRI(total_lines=W)
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 3, H, W, dtype=torch.complex128, generator=g)
    mask = torch.rand(2, 1, W, generator=g) < 0.5
    x = torch.randn(4, 2, H, W, dtype=F64, generator=g)
    img = torch.complex(x[:, 0], x[:, 1]).reshape(2, 2, H, W)
    expected = fft2c(img.unsqueeze(2) * maps.unsqueeze(1)) * mask.reshape(2, 1, 1, 1, W)
    expected = torch.view_as_real(expected.flatten(0, 1))
    torch.testing.assert_close(op.forward(x, maps, mask), expected, rtol=0, atol=1e-12)
    single = op.forward(x.float(), maps.to(torch.complex64), mask)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single, expected.float(), rtol=0, atol=1e-5)
    y = torch.randn(expected.shape, dtype=F64, generator=g)
    lhs, rhs = (op.forward(x, maps, mask) * y).sum(), (x * op.adjoint(y, maps, mask)).sum()
    assert abs(float(lhs - rhs)) < 1e-12 * float(lhs.abs())


def test_fully_sampled_adjoint_recovers_image():
    op = MultiCoilMRI(total_lines=16)
    maps = smooth_maps(2, 4, 16)
    full = torch.ones(2, 1, 16, dtype=torch.bool)
    x = rand_x(2, 16)
    torch.testing.assert_close(op.adjoint(op.forward(x, maps, full), maps, full), x)


def test_observations_real_and_simulated():
    op = MultiCoilMRI(total_lines=16, sigma_noise=0.05)
    maps = smooth_maps(2, 4, 16)
    x = rand_x(2, 16).float()
    rng = BatchRNG.for_items(0, range(2), 0)
    sim = op({"target": x, "maps": maps}, rng)
    assert sim.physics["mask"].shape == (2, 1, 16)
    noise = sim.y - op.forward(x, **sim.physics)
    sampled = sim.physics["mask"].reshape(2, 1, 1, 16, 1).expand_as(noise)
    assert float(noise[~sampled].abs().max()) == 0.0  # noise only on acquired lines
    assert abs(float(noise[sampled].std()) / (0.05 / math.sqrt(2)) - 1) < 0.1
    kspace = torch.randn(2, 4, 16, 16, dtype=torch.complex128)
    real = op({"target": x, "maps": maps, "kspace": kspace}, rng)
    expected = torch.view_as_real(kspace * sim.physics["mask"][:, None].to(F64))
    torch.testing.assert_close(real.y, expected)  # raw k-space: masked, no noise added


def test_mri_metrics_per_sample_for_every_sample_count():
    """PSNR of magnitudes with data range max|target|, the same for N = 1, 2 and 5 copies (the
    reference's batching gives nothing for 1 < N < 32); data misfit 0 for the truth."""
    from eval import MRI

    op = MultiCoilMRI(total_lines=16)
    maps, mask = smooth_maps(1, 4, 16), masks(1, 16)
    target = rand_x(1, 16).float()
    obs = Observation(op.forward(target.double(), maps, mask), {"maps": maps, "mask": mask})
    pred = target + 0.1 * rand_x(1, 16, seed=8).float()
    mag = lambda z: z.double().square().sum(1).sqrt()  # noqa: E731
    top = mag(target).max()
    mse = ((mag(pred).clamp(0, float(top)) - mag(target)) ** 2).mean()
    expected = float(10 * torch.log10(top**2 / mse))
    for n in (1, 2, 5):
        values = MRI(op).evaluate(pred.expand(n, -1, -1, -1), target, obs)
        assert values["psnr"] == pytest.approx(expected, rel=1e-5)  # piq adds 1e-8 to the MSE
        assert 0 < values["ssim"] < 1 and values["data_misfit"] > 0
    assert MRI(op).evaluate(target, target, obs)["data_misfit"] < 1e-6
    # a diverged sample gives NaN metrics for its item (flagged by the harness), not a crash in piq
    bad = torch.cat([pred, torch.full_like(pred, float("nan"))])
    values = MRI(op).evaluate(bad, target, obs)
    assert math.isnan(values["psnr"]) and math.isnan(values["ssim"])


def test_birdcage_maps_are_smooth_and_normalized():
    from training.mri import birdcage_maps

    maps = birdcage_maps(6, 32)
    torch.testing.assert_close(maps.abs().square().sum(0), torch.ones(32, 32, dtype=F64))
    # smooth: almost all of each map's energy at the lowest spatial frequencies (|k| <= 4 of 16)
    power = torch.fft.fftshift(torch.fft.fft2(maps), dim=(-2, -1)).abs().square()
    k = torch.arange(32) - 16
    low = (k[:, None] ** 2 + k[None, :] ** 2) <= 16
    assert float((power[:, low].sum(1) / power.flatten(1).sum(1)).min()) > 0.95


def test_synthetic_scan_mvue_and_lmdb_round_trip(tmp_path):
    """The MVUE sum_c conj(S_c) F^H k_c / sqrt(sum_c |S_c|^2) of noise-free simulated k-space is
    the image; the three-environment LMDB layout reads back what was written."""
    from training.mri import MultiCoilMRILMDBData, generate, synthetic_scan, write_mri_lmdb

    scan = synthetic_scan(32, 4, torch.Generator().manual_seed(0), noise=0.0)
    maps, k = torch.from_numpy(scan["s_maps"]), torch.from_numpy(scan["kspace"])
    mvue = (ifft2c(k) * maps.conj()).sum(0) / maps.abs().square().sum(0).sqrt()
    torch.testing.assert_close(mvue, torch.from_numpy(scan["mvue"][0]), atol=1e-5, rtol=0)
    assert abs(float(torch.quantile(mvue.abs().flatten(), 0.99)) - 1) < 1e-5

    scans = generate(3, 32, 4, seed=5)
    write_mri_lmdb(tmp_path / "db", scans)
    ds = MultiCoilMRILMDBData(tmp_path / "db", image_size=[32, 32])
    assert len(ds) == 3
    item = ds[2]
    assert item["target"].shape == (2, 32, 32) and item["maps"].shape == (4, 32, 32)
    torch.testing.assert_close(item["kspace"], torch.from_numpy(scans[2]["kspace"]))
    torch.testing.assert_close(item["target"][1], torch.from_numpy(scans[2]["mvue"][0].imag))
    sim = MultiCoilMRILMDBData(tmp_path / "db", image_size=[32, 32], simulated_kspace=True)
    assert "kspace" not in sim[0]
    only = MultiCoilMRILMDBData(tmp_path / "db", image_size=[32, 32], mvue_only=True)
    assert set(only[0]) == {"target"}
    with pytest.raises(FileNotFoundError, match="s_maps"):
        write_mri_lmdb(tmp_path / "mvue-only", scans, envs=("mvue",))
        MultiCoilMRILMDBData(tmp_path / "mvue-only", image_size=[32, 32])


def test_espirit_maps_match_the_true_maps():
    """ESPIRiT maps estimated from noisy k-space (1 % noise, 16 calibration lines of 64) agree with
    the true birdcage maps up to the per-pixel common phase ESPIRiT cannot see: coil-vector
    correlation |<S_est, S_true>| / (|S_est| |S_true|) >= 0.999 at every object pixel (measured:
    mean 1.0000, min 0.9994), and the MVUE they give matches the phantom's magnitude to 0.2 %."""
    from training.mri import birdcage_maps, espirit_maps, knee_phantom, mvue, synthetic_scan

    g = torch.Generator().manual_seed(3)
    image = knee_phantom(64, g)
    maps = birdcage_maps(6, 64, radius=1.5)
    k = fft2c(maps * image)
    k = k + 0.01 * k.abs().square().mean().sqrt() * torch.randn(k.shape, dtype=k.dtype, generator=g)
    est = espirit_maps(k, calib_width=16)
    support = image.abs() > 0.05 * image.abs().max()
    corr = (est.conj() * maps).sum(0).abs() / (est.abs().norm(dim=0) * maps.abs().norm(dim=0))
    assert float(corr[support].min()) > 0.999
    combined = mvue(k, est).abs()
    err = (combined - image.abs())[support].norm() / image.abs()[support].norm()
    assert float(err) < 0.005

    scan = synthetic_scan(32, 4, torch.Generator().manual_seed(0), maps="espirit")
    assert scan["s_maps"].shape == (4, 32, 32)
    target = torch.from_numpy(scan["mvue"][0])
    assert abs(float(torch.quantile(target.abs().flatten(), 0.99)) - 1) < 1e-5
    torch.testing.assert_close(  # the target is the estimated maps' MVUE of the k-space
        mvue(torch.from_numpy(scan["kspace"]), torch.from_numpy(scan["s_maps"])),
        target,
        atol=1e-5,
        rtol=0,
    )
    with pytest.raises(ValueError, match="maps must be"):
        synthetic_scan(32, 4, torch.Generator(), maps="sense")
    with pytest.raises(ValueError, match="wider calib_width"):
        espirit_maps(torch.from_numpy(scan["kspace"]), calib_width=8)


def test_real_kspace_is_consistent_with_the_operator():
    """Raw k-space of a generated scan equals the operator applied to its MVUE target, up to the
    acquisition noise (1 % of the k-space RMS)."""
    from training.mri import generate

    scan = generate(1, 32, 4, seed=2, noise=0.01)[0]
    op = MultiCoilMRI(total_lines=32)
    mvue = torch.from_numpy(scan["mvue"])
    x = torch.stack([mvue.real, mvue.imag], dim=1).double()
    maps = torch.from_numpy(scan["s_maps"])[None]
    full = torch.ones(1, 1, 32, dtype=torch.bool)
    sim = torch.view_as_complex(op.forward(x, maps, full).contiguous())[0]
    k = torch.from_numpy(scan["kspace"]).to(torch.complex128)
    rel = float((sim - k).abs().square().mean().sqrt() / k.abs().square().mean().sqrt())
    assert 0.005 < rel < 0.02


def test_fastmri_hdf5_reader(tmp_path):
    """A fastMRI-like scan (2x readout oversampling, extra phase-encode lines, 8 slices) written
    as HDF5 with its maps: items are the slices in the slice range, the target is the normalized
    MVUE, and the operator applied to the target reproduces the (noise-free) k-space."""
    import h5py

    from training.mri import MultiCoilMRIData, birdcage_maps, knee_phantom

    n, coils, slices = 16, 4, 8
    g = torch.Generator().manual_seed(0)
    maps = birdcage_maps(coils, 2 * n)[:, :, 4:-4]  # (Nc, 32, 24): readout 2n, 24 PE lines
    imgs = []
    for _ in range(slices):
        small = knee_phantom(n, g)
        big = torch.zeros(2 * n, 2 * n - 8, dtype=torch.complex128)
        big[n // 2 : n // 2 + n, 4 : 4 + n] = small
        imgs.append(big)
    k = torch.stack([fft2c(maps * im) for im in imgs])  # (slices, Nc, 32, 24)
    (tmp_path / "val").mkdir()
    (tmp_path / "val_sens_maps_espirit").mkdir()
    with h5py.File(tmp_path / "val" / "file1.h5", "w") as h:
        h["kspace"] = k.to(torch.complex64).numpy()
    with h5py.File(tmp_path / "val_sens_maps_espirit" / "file1.h5", "w") as h:
        h["s_maps"] = maps.expand(slices, -1, -1, -1).to(torch.complex64).numpy()
    ds = MultiCoilMRIData(
        tmp_path / "val_sens_maps_espirit", image_size=[n, n], slice_range=[2, -2]
    )
    assert len(ds) == 4
    item = ds[1]
    assert item["target"].shape == (2, n, n) and item["kspace"].shape == (coils, n, n)
    target = torch.complex(item["target"][0].double(), item["target"][1].double())
    assert abs(float(torch.quantile(target.abs().flatten(), 0.99)) - 1) < 1e-4
    op = MultiCoilMRI(total_lines=n)
    full = torch.ones(1, 1, n, dtype=torch.bool)
    sim = op.forward(item["target"][None].double(), item["maps"][None], full)
    expected = torch.view_as_real(item["kspace"][None].to(torch.complex128))
    assert float((sim - expected).abs().max()) < 1e-5 * float(expected.abs().max())
    with pytest.raises(ValueError, match="_sens_maps_espirit"):
        MultiCoilMRIData(tmp_path / "val")


def test_sigpy_fft_is_the_operators():
    import sigpy as sp

    x = torch.randn(3, 16, 16, dtype=torch.complex128)
    torch.testing.assert_close(torch.from_numpy(sp.fft(x.numpy(), axes=(-2, -1))), fft2c(x))


def test_cs_baselines_beat_zero_filled_on_small_problem():
    """On two shipped multi-coil-mri-small scans (raw k-space, 4x): SENSE and L1-wavelet CS
    beat the zero-filled reconstruction A^H y (measured on items 0-2: zero-filled 17.9 dB, SENSE
    23.0, L1-wavelet lamda 1e-3 23.3)."""
    from pathlib import Path

    from algo.cs_mri import CompressedSensingMRI
    from eval import MRI
    from training.mri import MultiCoilMRILMDBData

    root = Path(__file__).resolve().parents[1] / "data/multi-coil-mri-small/test"
    ds = MultiCoilMRILMDBData(root, image_size=[64, 64], id_list="0-1")
    data = {k: torch.stack([ds[i][k] for i in range(2)]) for k in ds[0]}
    op = MultiCoilMRI(total_lines=64, acceleration_ratio=4)
    obs = op(data, BatchRNG.for_items(0, range(2), 0))

    class Net:
        shape = (2, 64, 64)

    def psnr(pred):
        ev = MRI(op)
        for i in range(2):
            ev(
                pred[2 * i : 2 * i + 1] if pred.shape[0] == 4 else pred[i : i + 1],
                data["target"][i : i + 1],
                obs.item(i),
            )
        return ev.compute()["psnr"]

    zero = psnr(op.adjoint(obs.y, **obs.physics).float())
    sense = psnr(CompressedSensingMRI(Net(), op, "Sense", 0.0).inference(obs))
    wavelet = CompressedSensingMRI(Net(), op, "L1Wavelet", 1e-3).inference(obs, num_samples=2)
    assert wavelet.shape == (4, 2, 64, 64) and torch.equal(wavelet[0], wavelet[1])
    assert sense > zero + 3 and psnr(wavelet) > zero + 3, (zero, sense)


def test_cs_mri_refuses_non_mri_operators():
    from algo.cs_mri import CompressedSensingMRI
    from inverse_problems.linear import PixelSubsample

    class Net:
        shape = (1, 8, 8)

    with pytest.raises(ValueError, match="multi-coil MRI"):
        CompressedSensingMRI(Net(), PixelSubsample(shape=(1, 8, 8)))


def test_shipped_small_prior_matches_the_data():
    """Unconditional samples of checkpoints/mri-small.pt look like the training MVUEs (measured on
    32 samples, Heun 40 steps: |x| mean 0.233, std 0.314, 22.3 % of pixels above 0.5; data
    0.238, 0.326, 23.1 %; nearest training image no closer than training images are to each
    other). Here 8 samples and 20 steps, with margins."""
    from tests.conftest import shipped_prior_samples

    x = shipped_prior_samples("mri-small", "mri-small.pt", 8, steps=20)
    mag = x.square().sum(1).sqrt()
    assert abs(float(mag.mean()) - 0.238) < 0.05 and abs(float(mag.std()) - 0.326) < 0.06
    assert abs(float((mag > 0.5).float().mean()) - 0.231) < 0.07


def test_small_problem_diffusion_beats_zero_filled(config_factory):
    """multi-coil-mri-small through main.py with the shipped prior and the tuned CSGM settings
    (348 NFE): far better than the zero-filled reconstruction. Measured on the 10 default items,
    PSNR / SSIM: zero-filled 17.2 / 0.445, SENSE 22.7 / 0.573, L1-wavelet 23.1 / 0.660, TV 19.0 /
    0.538, DPS 27.2 / 0.643, ScoreMRI 25.2 / 0.611, CSGM 30.9 / 0.805 (tuned settings in
    configs/tuned/multi-coil-mri-small). Here items 0-1."""
    from pathlib import Path

    from eval import MRI
    from main import run
    from training.mri import MultiCoilMRILMDBData

    common = ["problem=multi-coil-mri-small", "pretrain=mri-small", "problem.data.id_list=0-1"]
    csgm = run(config_factory([*common, "algorithm=csgm_mri"]))
    assert csgm["nfe"] == 348 and csgm["op_gradient"] == 348 and csgm["nonfinite"] == 0
    root = Path(__file__).resolve().parents[1] / "data/multi-coil-mri-small/test"
    ds = MultiCoilMRILMDBData(root, image_size=[64, 64], id_list="0-1")
    op = MultiCoilMRI(total_lines=64, acceleration_ratio=4)
    zero = MRI(op)
    for i in range(2):
        data = {k: v[None] for k, v in ds[i].items()}
        obs = op(data, BatchRNG.for_items(0, [i], 0))
        zero(op.adjoint(obs.y, **obs.physics).float(), data["target"], obs)
    zf = zero.compute()
    assert csgm["psnr"] > zf["psnr"] + 6 and csgm["ssim"] > zf["ssim"] + 0.2, (csgm, zf)
