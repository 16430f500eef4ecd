"""SMC samplers (FPS, MCGDiff, DDSMC) against the exact Gaussian-mixture posterior (gmm, d=8).

The problems are items of ``LinearGMMProblems`` (seed 0, random sigma_y); the exact posterior and
the metrics come from ``eval.ExactPosterior``. Hyperparameters are the tuned gmm values
(configs/tuned/gmm): DDSMC eta 1; FPS eta 0.5 for the particle sweeps (at 20 particles the
reference's 0.85 is better, see configs/tuned/gmm/fps.yaml), on 50-step grids, resampling every
step as in the papers unless a test says otherwise. Thresholds were set from measured values
(quoted in each test), with margin; they are not tuned to pass.
"""

from __future__ import annotations

import functools

import pytest
import torch

from algo.ddsmc import DDSMC
from algo.dps import DPS
from algo.fps import FPS
from algo.mcgdiff import MCG_diff, MCGDiff
from eval import ExactPosterior
from inverse_problems.linear import SVDLinear
from models.analytic import AnalyticPrior
from training.exact import LinearGMMProblems
from utils.compute import CountingNet, CountingOperator, Counts
from utils.distributions import grid_gmm
from utils.results import collate
from utils.rng import BatchRNG

METHODS = ("fps", "mcgdiff", "ddsmc")
VP = {"schedule": "vp", "timestep": "vp", "scaling": "vp"}
EDM = {"sigma_max": 100, "sigma_min": 0.01, "schedule": "linear", "timestep": "poly-7"}
ITEMS = (0, 1, 2, 3)
STEPS = 50
SAMPLES = 30


def make(name, net, op, particles, steps=STEPS, batch_size=None, ess=1.0):
    if name == "fps":
        return FPS(net, op, {"num_steps": steps, **VP}, 0.5, particles, batch_size, ess)
    if name == "mcgdiff":
        return MCG_diff(net, op, {"num_steps": steps, **EDM}, particles, batch_size, ess)
    rho = {"num_steps": steps, "sigma_max": 47, "sigma_min": 0.01, "sigma_final": 0}
    smc = {"num_particles": particles, "resampling": "multinomial"}
    annealing = {"num_steps": steps, **EDM, "sigma_final": 0}
    return DDSMC(net, op, smc, 1.0, annealing, rho, batch_size=batch_size, ess_threshold=ess)


@functools.cache
def problem(dim_y, items=ITEMS, sigma_noise="random"):
    gmm = grid_gmm(8)
    op = SVDLinear()
    ids = ",".join(map(str, items))
    data = LinearGMMProblems(gmm, dim_y=dim_y, sigma_noise=sigma_noise, id_list=ids)
    obs = op(collate([data[i] for i in range(len(items))]), BatchRNG.for_items(0, items, 0))
    return gmm, op, obs


@functools.cache
def scores(name, particles, dim_y, samples=SAMPLES, seed=1, steps=STEPS, ess=1.0):
    """Mean sliced W1 and mode TV to the exact posterior over ITEMS (``samples`` each)."""
    gmm, op, obs = problem(dim_y)
    net = AnalyticPrior(gmm)
    n = samples
    if name == "prior":
        x = gmm.sample(n * len(ITEMS), torch.Generator().manual_seed(seed))
    else:
        if name == "dps":
            algo = DPS(net, op, {"num_steps": 300, **VP}, guidance_scale=1.0)
        else:
            algo = make(name, net, op, particles, steps=steps, ess=ess)
        x = algo.inference(obs, num_samples=n, rng=BatchRNG.for_items(seed, ITEMS, 1))
    evaluator = ExactPosterior(gmm, op, num_reference=4000, num_projections=128)
    sw, tv = [], []
    for i in range(len(ITEMS)):
        m = evaluator.evaluate(x[n * i : n * (i + 1)].reshape(n, 8, 1, 1), None, obs.item(i))
        sw.append(m["sw"])
        tv.append(m["mode_tv"])
    return sum(sw) / len(sw), sum(tv) / len(tv)


# -- against the exact posterior -----------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_more_particles_move_toward_the_posterior(name):
    """d_y=1 (multimodal posterior), 4 items x 30 samples: 256 particles clearly beat 16.

    Measured here (sw / mode_tv, 16 -> 256 particles): FPS 3.19 / 0.35 -> 2.07 / 0.17, MCGDiff
    3.22 / 0.30 -> 1.14 / 0.10, DDSMC 2.80 / 0.20 -> 1.52 / 0.13; over three seeds the largest
    ratio 256/16 was 0.66 (sw) and 0.67 (mode_tv). Exact samples score about 1.1 / 0.1 at this
    size. Threshold: ratio < 0.85.
    """
    sw16, tv16 = scores(name, 16, 1)
    sw256, tv256 = scores(name, 256, 1)
    assert sw256 < 0.85 * sw16, (sw16, sw256)
    assert tv256 < 0.85 * tv16, (tv16, tv256)


@pytest.mark.parametrize("name", METHODS)
def test_256_particles_beat_dps(name):
    """d_y=1: each SMC method at 256 particles is clearly closer than DPS (guidance 1, 300 VP
    steps). Measured over three seeds: DPS 4.34-4.52 / 0.44-0.46 (sw / mode_tv), the SMC
    methods at most 2.08 / 0.18. Threshold: SMC < 0.7 x DPS."""
    sw_dps, tv_dps = scores("dps", 1, 1)
    sw, tv = scores(name, 256, 1)
    assert sw < 0.7 * sw_dps, (sw, sw_dps)
    assert tv < 0.7 * tv_dps, (tv, tv_dps)


@pytest.mark.parametrize("name", METHODS)
def test_close_to_the_posterior_on_four_observations(name):
    """d_y=4 (nearly unimodal posterior), 16 particles: far closer than the prior. Measured over
    three seeds: prior 10.2-12.4 / 0.85-0.95 (sw / mode_tv); FPS at most 0.61 / 0.087, MCGDiff
    0.60 / 0.13, DDSMC 0.24 / 0.02. Threshold: sw < 0.1 x prior, mode_tv < 0.3 x prior."""
    sw_prior, tv_prior = scores("prior", 1, 4)
    sw, tv = scores(name, 16, 4)
    assert sw < 0.1 * sw_prior, (sw, sw_prior)
    assert tv < 0.3 * tv_prior, (tv, tv_prior)


@pytest.mark.parametrize(("name", "particles"), [("mcgdiff", 64), ("ddsmc", 16)])
def test_adaptive_resampling_helps_on_long_grids(name, particles):
    """d_y=1 at the reference's particle counts and 200 steps: resampling only when the ESS
    halves (ess_threshold 0.5) beats resampling every step. Measured over three seeds (4 items x
    30 samples, sw / mode_tv): MCGDiff 2.77-3.38 / 0.20-0.33 -> 0.99-1.97 / 0.08-0.15, DDSMC
    3.00-3.17 / 0.28-0.29 -> 1.02-1.38 / 0.12-0.14; the largest ratio per seed was 0.69 (sw) and
    0.74 (mode_tv). Threshold: ratio < 0.85."""
    sw1, tv1 = scores(name, particles, 1, steps=200, ess=1.0)
    sw_half, tv_half = scores(name, particles, 1, steps=200, ess=0.5)
    assert sw_half < 0.85 * sw1, (sw1, sw_half)
    assert tv_half < 0.85 * tv1, (tv1, tv_half)


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_monotone_convergence_in_particles(name):
    """d_y=1, 16 -> 64 -> 256 particles, 4 items x 200 samples, averaged over seeds 0-2 (about
    3 minutes per method). Measured averages, sw: FPS 2.85 / 1.34 / 0.72, MCGDiff 2.75 / 1.39 /
    0.81, DDSMC 2.21 / 0.88 / 0.66; mode_tv: FPS 0.30 / 0.11 / 0.065, MCGDiff 0.25 / 0.11 /
    0.084, DDSMC 0.18 / 0.073 / 0.068 (exact samples: about 0.5 / 0.05). Threshold: each step
    at most 0.9 x the previous, except DDSMC's mode_tv from 64 to 256, already within 0.02 of
    the floor at 64 particles: it may not grow by more than 0.01."""
    seeds = (0, 1, 2)
    results = []
    for particles in (16, 64, 256):
        runs = [scores(name, particles, 1, samples=200, seed=seed) for seed in seeds]
        results.append(tuple(sum(r[i] for r in runs) / len(runs) for i in (0, 1)))
    (sw16, tv16), (sw64, tv64), (sw256, tv256) = results
    assert sw64 < 0.9 * sw16 and sw256 < 0.9 * sw64, results
    assert tv64 < 0.9 * tv16, results
    assert tv256 < (tv64 + 0.01 if name == "ddsmc" else 0.9 * tv64), results


# -- contract ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_network_chunks_change_nothing(name):
    """Network chunks that split the particles change nothing. (Batching and state:
    tests/test_algorithms_shared.py.)"""
    gmm, op, obs = problem(2, items=(0, 1, 2))
    net = AnalyticPrior(gmm)

    def rng(ids):
        return BatchRNG.for_items(3, ids, 1)

    x = make(name, net, op, 8, steps=12).inference(obs, num_samples=3, rng=rng((0, 1, 2)))
    assert x.shape == (9, 8, 1, 1) and torch.isfinite(x).all()
    chunked = make(name, net, op, 8, steps=12, batch_size=5)
    torch.testing.assert_close(chunked.inference(obs, 3, rng((0, 1, 2))), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", METHODS)
def test_counts_every_network_and_operator_call(name):
    """NFE per sample = particles x steps; the operator is only used through ``forward_op``."""
    gmm, op, obs = problem(2, items=(0, 1))
    counts = Counts()
    algo = make(name, CountingNet(AnalyticPrior(gmm), counts), CountingOperator(op, counts), 4, 6)
    algo.inference(obs, num_samples=2, rng=BatchRNG.for_items(0, (0, 1), 1))
    assert counts.nfe == 2 * 2 * 4 * 6
    assert counts.op_linear > 0 and counts.op_gradient == 0


@pytest.mark.parametrize("name", METHODS)
def test_noise_free_data_are_reproduced(name):
    """sigma_y = 0: finite samples whose measurements match y up to the last noise level (0.01;
    measured misfits 0.0002-0.018)."""
    gmm, op, obs = problem(4, items=(0, 1), sigma_noise=0.0)
    algo = make(name, AnalyticPrior(gmm), op, 8, steps=30)
    x = algo.inference(obs, num_samples=4, rng=BatchRNG.for_items(0, (0, 1), 1))
    assert torch.isfinite(x).all()
    misfit = op.loss(x.double(), obs).sqrt()  # ||A x - y||, 4 measurements, |y| ~ 10
    assert misfit.max() < 0.05, misfit


@pytest.mark.parametrize("cls", (FPS, MCG_diff, DDSMC))
def test_an_operator_without_svd_is_refused(cls):
    class NoSVD(SVDLinear):
        capabilities = frozenset({"gradient", "linear", "adjoint", "pseudo_inverse"})

    gmm = grid_gmm(8)
    args = {
        FPS: ({"num_steps": 5, **VP}, 0.85, 4),
        MCG_diff: ({"num_steps": 5, **EDM}, 4),
        DDSMC: ({"num_particles": 4}, 0.5, {"num_steps": 5, **EDM}),
    }[cls]
    with pytest.raises(ValueError, match="svd"):
        cls(AnalyticPrior(gmm), NoSVD(), *args)
    assert MCGDiff is MCG_diff
