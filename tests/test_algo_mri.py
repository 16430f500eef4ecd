"""The MRI diffusion baselines ``score_mri`` (Chung and Ye) and ``csgm_mri`` (Jalal et al.):
data consistency, an exact Gaussian posterior, batching, and the calls they make."""

from __future__ import annotations

import pytest
import torch

from algo.csgm_mri import CSGMMRI, geometric_sigmas
from algo.score_mri import ScoreMRI
from eval import dense_matrix
from inverse_problems.multi_coil_mri import MultiCoilMRI, fft2c, line_mask
from models.analytic import AnalyticPrior
from utils.compute import CountingNet, CountingOperator, Counts
from utils.distributions import gaussian
from utils.rng import BatchRNG

F64 = torch.float64
N = 8  # 8 x 8 complex images: 128 real unknowns


def smooth_maps(B, coils, seed=0):
    """Smooth random complex maps (B, coils, N, N) normalized to sum_c |S_c|^2 = 1."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(B * coils * 2, 1, 3, 3, dtype=F64, generator=g)
    up = torch.nn.functional.interpolate(low, size=(N, N), mode="bilinear", align_corners=True)
    maps = torch.complex(*up.reshape(B, coils, 2, N, N).unbind(2))
    return maps / maps.abs().square().sum(1, keepdim=True).sqrt()


def problem(items=2, coils=4, sigma=0.5, seed=0):
    """Gaussian prior N(0, I) on (2, N, N); R = 2 line masks per item; noisy simulated k-space."""
    prior = AnalyticPrior(gaussian(torch.zeros(2 * N * N), torch.eye(2 * N * N)), (2, N, N))
    op = MultiCoilMRI(total_lines=N, acceleration_ratio=2, sigma_noise=sigma)
    g = torch.Generator().manual_seed(seed + 1)
    mask = torch.stack([line_mask(N, 2, "random", g) for _ in range(items)])[:, None, :]
    x = torch.randn(items, 2, N, N, dtype=F64, generator=g)
    obs = op(
        {"target": x, "maps": smooth_maps(items, coils, seed), "mask": mask},
        BatchRNG.for_items(seed, range(items), 0),
    )
    return prior, op, obs


def exact_posterior(op, obs, sigma):
    """Mean and covariance of x | y for x ~ N(0, I), y = A x + CN(0, sigma^2) (real A: the
    operator's real-stacked matrix; each real part has variance sigma^2 / 2)."""
    A = dense_matrix(op, obs, (2, N, N))
    precision = torch.eye(A.shape[1], dtype=F64) + 2.0 / sigma**2 * A.T @ A
    cov = torch.linalg.inv(precision)
    return cov @ (2.0 / sigma**2 * A.T @ obs.y.reshape(-1).to(F64)), cov


def test_data_consistency_is_the_k_space_projection_for_one_coil():
    """lamb = 1 with one unit-magnitude coil replaces the acquired k-space lines by the data and
    keeps the others (Chung and Ye's projection); with several coils it is a non-expansive
    gradient step that lowers the misfit."""
    op = MultiCoilMRI(total_lines=N, acceleration_ratio=2)
    g = torch.Generator().manual_seed(0)
    mask = line_mask(N, 2, "random", g)[None, None, :]
    phase = torch.polar(torch.ones(1, 1, N, N, dtype=F64), torch.rand(1, 1, N, N, dtype=F64))
    obs = op({"target": torch.randn(1, 2, N, N, dtype=F64), "maps": phase, "mask": mask}, None)
    algo = ScoreMRI(
        AnalyticPrior(gaussian(torch.zeros(2 * N * N), torch.eye(2 * N * N)), (2, N, N)),
        op,
        {"num_steps": 2},
        lamb=1.0,
    )
    u = torch.randn(3, 2, N, N, dtype=F64, generator=g)
    out = algo.data_consistency(u, 1.0, obs)
    k_in, k_out = (fft2c(torch.complex(v[:, 0], v[:, 1]) * phase[0]) for v in (u, out))
    y = torch.view_as_complex(obs.y[0, 0].contiguous())
    acquired = mask[0, 0].expand(N, N)
    torch.testing.assert_close(k_out[:, acquired], y[acquired].expand(3, -1))
    torch.testing.assert_close(k_out[:, ~acquired], k_in[:, ~acquired])

    _, op4, obs4 = problem(items=1, sigma=0.0)
    algo4 = ScoreMRI(algo.net, op4, {"num_steps": 2}, lamb=1.0)
    before = op4.loss(u, obs4)
    assert bool((op4.loss(algo4.data_consistency(u, 1.0, obs4), obs4) < 0.5 * before).all())


def test_csgm_paper_weighting_samples_the_exact_gaussian_posterior():
    """With the paper's likelihood weight mse / sigma_c^2 and mse = 2 sigma_L^2 / sigma^2, the last
    level's Langevin target is the posterior under the sigma_L-smoothed prior (sigma_L = 0.01: a
    1e-4 change). Measured with 300 samples: mean error 0.075 and std error 0.036 of the exact
    posterior's std (Monte Carlo floor 0.058 and about 0.04; the unadjusted Langevin bias on the
    std is +2 %). Fewer steps per level leave the chain lagging the annealed target (10 steps:
    mean error 0.2)."""
    sigma, sigma_last = 0.5, 0.01
    prior, op, obs = problem(items=1, sigma=sigma)
    algo = CSGMMRI(
        prior,
        op,
        {"sigma_max": 0.07, "sigma_min": sigma_last, "num_levels": 10},
        start_iter=0,
        n_steps_each=40,
        step_lr=2e-2,
        mse=2 * sigma_last**2 / sigma**2,
        normalize=False,
    )
    n = 300
    x = algo.inference(obs, num_samples=n, rng=BatchRNG.for_items(0, range(1), 1)).to(F64)
    mean, cov = exact_posterior(op, obs, sigma)
    std = cov.diagonal().sqrt()
    x = x.flatten(1)
    mean_err = float(((x.mean(0) - mean) / std).square().mean().sqrt())
    std_err = float((x.std(0) / std - 1).abs().mean())
    assert mean_err < 0.12 and std_err < 0.07, (mean_err, std_err)


def test_geometric_levels_and_bad_settings():
    sig = geometric_sigmas(232.0, 0.0066, 2311)
    assert len(sig) == 2311 and sig[0] == pytest.approx(232.0) and sig[-1] == pytest.approx(0.0066)
    assert sig[1155] == pytest.approx((232.0 * 0.0066) ** 0.5)  # the reference's start: 1.24
    prior, op, _ = problem(items=1)
    with pytest.raises(ValueError, match="start_iter"):
        CSGMMRI(prior, op, {"sigma_max": 1, "sigma_min": 0.1, "num_levels": 5}, start_iter=5)
    with pytest.raises(ValueError, match="sigma_max > sigma_min"):
        CSGMMRI(prior, op, {"sigma_max": 0.1, "sigma_min": 1, "num_levels": 5})


def _algos(prior, op):
    return {
        "score_mri": ScoreMRI(
            prior,
            op,
            {"num_steps": 6, "schedule": "vp", "timestep": "vp", "scaling": "vp"},
            correct_steps=1,
            lr=0.16,
        ),
        "csgm_mri": CSGMMRI(
            prior,
            op,
            {"sigma_max": 10, "sigma_min": 0.01, "num_levels": 8},
            start_iter=3,
            n_steps_each=2,
            step_lr=1e-4,
            mse=0.5,
        ),
    }


@pytest.mark.parametrize("name", ["score_mri", "csgm_mri"])
def test_call_counts(name):
    """Per sample, score_mri makes 2 network and 2 operator-gradient calls per step (predictor +
    one corrector), csgm_mri n_steps_each of each per level from start_iter. (Batching and state:
    tests/test_algorithms_shared.py; items with different maps: tests/test_operators.py.)"""
    prior, op, obs = problem(items=2, sigma=0.1)
    counts = Counts()
    algo = _algos(CountingNet(prior, counts), CountingOperator(op, counts))[name]
    rng = BatchRNG.for_items(0, range(2), 1)
    together = algo.inference(obs, num_samples=3, rng=rng)
    assert torch.isfinite(together).all() and together.shape == (6, 2, N, N)
    expected = 12 if name == "score_mri" else 10
    assert counts.nfe == expected * 6 and counts.op_gradient == expected * 6
