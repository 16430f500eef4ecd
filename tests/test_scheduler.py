"""Tests for utils/scheduler.py (noise schedules, grids) and utils/diffusion.py (samplers).

The sampler tests use a Gaussian prior N(mu, tau^2 I), for which the probability-flow ODE has a
closed-form solution: in the unscaled variable x_hat = x / s(t),
x_hat(sigma) - mu = (x_hat(sigma_0) - mu) * sqrt((tau^2 + sigma^2) / (tau^2 + sigma_0^2)).
"""

import math

import numpy as np
import pytest
import torch

from models.analytic import AnalyticPrior
from utils.diffusion import sample
from utils.distributions import gaussian
from utils.rng import BatchRNG
from utils.scheduler import (
    VP_T_MIN,
    Scheduler,
    dlog_scaling_dt,
    dsigma_dt,
    partial_scheduler,
    scaling_of_t,
    sigma_of_t,
    t_of_sigma,
)

SCHEDULES = ["linear", "sqrt", "vp"]
# Time ranges where each schedule is used (vp: t in [1e-3, 1]; below 1e-8 the closed-form
# inverse loses digits to cancellation, which no grid reaches).
T_RANGE = {"linear": (1e-4, 1e2), "sqrt": (1e-6, 1e4), "vp": (1e-6, 1.0)}


def _times(schedule, n=41):
    lo, hi = T_RANGE[schedule]
    return np.logspace(math.log10(lo), math.log10(hi), n)


# -- schedule functions --------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_t_of_sigma_inverts_sigma_of_t(schedule):
    """t_of_sigma(sigma_of_t(t)) == t to 1e-10 relative."""
    t = _times(schedule)
    np.testing.assert_allclose(t_of_sigma(sigma_of_t(t, schedule), schedule), t, rtol=1e-10)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_sigma_of_t_inverts_t_of_sigma(schedule):
    """sigma_of_t(t_of_sigma(sigma)) == sigma to 1e-10 relative for sigma in [1e-3, 500]."""
    sigma = np.logspace(-3, math.log10(500), 41)
    np.testing.assert_allclose(sigma_of_t(t_of_sigma(sigma, schedule), schedule), sigma, rtol=1e-10)


def test_sigma_of_t_is_increasing_from_zero():
    """Every schedule has sigma(0) = 0 and is strictly increasing in t."""
    for schedule in SCHEDULES:
        assert sigma_of_t(0.0, schedule) == 0.0
        assert np.all(np.diff(sigma_of_t(_times(schedule), schedule)) > 0)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_dsigma_dt_matches_finite_differences(schedule):
    """dsigma_dt equals a central finite difference of sigma_of_t."""
    t = _times(schedule)[5:]  # keep t - h > 0 comfortably
    h = 1e-5 * t
    fd = (sigma_of_t(t + h, schedule) - sigma_of_t(t - h, schedule)) / (2 * h)
    np.testing.assert_allclose(dsigma_dt(t, schedule), fd, rtol=1e-7)


@pytest.mark.parametrize("scaling", ["vp", "none"])
def test_dlog_scaling_dt_matches_finite_differences(scaling):
    """dlog_scaling_dt equals a central finite difference of log(scaling_of_t)."""
    t = np.linspace(0.01, 1.0, 23)
    h = 1e-5

    def log_s(u):
        return np.log(scaling_of_t(u, scaling))

    fd = (log_s(t + h) - log_s(t - h)) / (2 * h)
    np.testing.assert_allclose(dlog_scaling_dt(t, scaling), fd, rtol=1e-7, atol=1e-9)


def test_vp_scaling_is_one_over_sqrt_one_plus_sigma2():
    """The VP scaling is s(t) = 1 / sqrt(1 + sigma(t)^2) (variance preserving)."""
    t = np.linspace(0.0, 1.0, 11)
    s = scaling_of_t(t, "vp")
    np.testing.assert_allclose(s, 1 / np.sqrt(1 + sigma_of_t(t, "vp") ** 2), rtol=1e-12)


# -- scheduler grids -----------------------------------------------------------------------------
def test_vp_preset_grid():
    """VP preset: sigma_0 = sigma(1) ~ 152.17, uniform t from 1 to 1e-3, then sigma_min."""
    sched = Scheduler(1000, schedule="vp", timestep="vp", scaling="vp")
    # sigma(1) = sqrt(exp(19.9 / 2 + 0.1) - 1) = 152.167; 0.05 covers the rounding of "152.2".
    assert abs(sched.sigma_steps[0] - 152.2) < 0.05
    assert sched.time_steps[0] == pytest.approx(1.0, abs=1e-15)
    assert sched.time_steps[-2] == pytest.approx(VP_T_MIN, rel=1e-12)
    np.testing.assert_allclose(np.diff(sched.time_steps[:-1]), -(1 - VP_T_MIN) / 999, rtol=1e-9)
    # sigma(1e-3) = sqrt(expm1(1.0995e-4)) = 0.010486
    assert sched.sigma_steps[-2] == pytest.approx(0.010486, rel=1e-4)
    assert sched.sigma_steps[-1] == pytest.approx(sched.sigma_min, rel=1e-12)


def test_vp_preset_sigma_max_is_initial_noise_scale():
    """VP preset overwrites sigma_max with sigma(1) * s(1), the std of x_T (~1, within 1e-4)."""
    sched = Scheduler(1000, schedule="vp", timestep="vp", scaling="vp")
    assert sched.sigma_max == pytest.approx(sched.sigma_steps[0] * sched.scaling_steps[0], 1e-12)
    assert abs(sched.sigma_max - 1.0) < 1e-4


def test_edm_preset_grid_endpoints():
    """EDM preset (linear, poly-7) starts at sigma_max and ends at sigma_min, decreasing."""
    sched = Scheduler(200, sigma_max=80.0, sigma_min=0.002, schedule="linear", timestep="poly-7")
    assert sched.sigma_steps[0] == pytest.approx(80.0, rel=1e-12)
    assert sched.sigma_steps[-2] == pytest.approx(0.002, rel=1e-9)
    assert sched.sigma_steps[-1] == pytest.approx(0.002, rel=1e-12)
    assert np.all(np.diff(sched.sigma_steps[:-1]) < 0)
    np.testing.assert_array_equal(sched.scaling_steps, 1.0)
    np.testing.assert_array_equal(sched.scaling_factor, 1.0)


@pytest.mark.parametrize("i", [1, 57, 100, 150])
def test_edm_preset_karras_spacing(i):
    """EDM grid point i is (smax^(1/7) + i/(N-1) (smin^(1/7) - smax^(1/7)))^7 (Karras rho=7)."""
    smax, smin, n, rho = 80.0, 0.002, 200, 7.0
    sched = Scheduler(n, sigma_max=smax, sigma_min=smin, schedule="linear", timestep="poly-7")
    expected = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    assert sched.sigma_steps[i] == pytest.approx(expected, rel=1e-12)


def test_ve_preset_is_geometric_in_sigma():
    """VE preset (sqrt, log): consecutive sigmas have the constant ratio (smin/smax)^(1/(N-1))."""
    n, smax, smin = 100, 100.0, 0.01
    sched = Scheduler(n, sigma_max=smax, sigma_min=smin, schedule="sqrt", timestep="log")
    ratios = sched.sigma_steps[1:-1] / sched.sigma_steps[:-2]
    np.testing.assert_allclose(ratios, (smin / smax) ** (1 / (n - 1)), rtol=1e-10)
    np.testing.assert_allclose(sched.time_steps, sched.sigma_steps**2, rtol=1e-12)
    assert sched.sigma_steps[0] == pytest.approx(smax, rel=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(schedule="vp", timestep="vp", scaling="vp"),
        dict(schedule="linear", timestep="poly-7"),
        dict(schedule="sqrt", timestep="log"),
    ],
)
@pytest.mark.parametrize("num_steps", [1, 7])
def test_grid_array_lengths(kwargs, num_steps):
    """Grid arrays have num_steps + 1 entries, per-step factors num_steps."""
    sched = Scheduler(num_steps, **kwargs)
    for name in ("sigma_steps", "time_steps", "scaling_steps", "dsigma_steps"):
        assert len(getattr(sched, name)) == num_steps + 1, name
    for name in ("factor_steps", "scaling_factor", "dt_steps"):
        assert len(getattr(sched, name)) == num_steps, name
    # The last step runs from sigma_min to sigma_final (= sigma_min here): empty up to rounding.
    assert np.all(sched.dt_steps[:-1] > 0) and sched.dt_steps[-1] > -1e-12
    assert np.all(sched.factor_steps >= 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(schedule="vp", timestep="vp", scaling="vp"),
        dict(schedule="linear", timestep="poly-7"),
        dict(schedule="sqrt", timestep="log"),
    ],
)
def test_sigma_final_zero_appends_zero(kwargs):
    """sigma_final=0 appends a final grid point with sigma = t = 0 after sigma_min."""
    base = Scheduler(10, **kwargs)
    sched = Scheduler(10, sigma_final=0.0, **kwargs)
    assert sched.sigma_steps[-1] == 0.0
    assert sched.time_steps[-1] == 0.0
    np.testing.assert_allclose(sched.sigma_steps[:-1], base.sigma_steps[:-1], rtol=1e-14)


def test_linear_schedule_euler_factor_is_edm_euler_step():
    """For sigma = t, no scaling, the ODE Euler factor/2 is sigma_i (sigma_i - sigma_{i+1})."""
    sched = Scheduler(18, sigma_max=80.0, sigma_min=0.002)
    sig = sched.sigma_steps
    np.testing.assert_allclose(0.5 * sched.factor_steps, sig[:-1] * (sig[:-1] - sig[1:]), 1e-12)


def test_invalid_arguments_raise():
    """Unknown schedule/grid names and num_steps < 1 raise ValueError."""
    with pytest.raises(ValueError):
        Scheduler(0)
    with pytest.raises(ValueError):
        Scheduler(5, schedule="cosine")
    with pytest.raises(ValueError):
        Scheduler(5, timestep="uniform")


# -- partial_scheduler ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_steps=50, schedule="linear", timestep="poly-7", sigma_max=80.0, sigma_min=0.002),
        dict(num_steps=200, schedule="vp", timestep="vp", scaling="vp"),
    ],
)
def test_partial_scheduler_brackets_sigma(kwargs):
    """partial_scheduler starts at a grid point >= sigma whose successor is < sigma."""
    sched = Scheduler(**kwargs)
    rng = np.random.default_rng(0)
    lo, hi = math.log(sched.sigma_steps[-2]), math.log(sched.sigma_steps[0])
    sigmas = [*np.exp(rng.uniform(lo, hi, size=20)), float(sched.sigma_steps[7])]
    for sigma in sigmas:
        part = partial_scheduler(sched, sigma)
        assert part.sigma_steps[0] >= sigma > part.sigma_steps[1], sigma
        # sigma_max is the std scale of the scaled starting state, as for a full grid.
        assert part.sigma_max == pytest.approx(part.sigma_steps[0] * part.scaling_steps[0])


def test_partial_scheduler_is_a_tail_of_the_grid():
    """The partial grid's arrays are consistent suffixes of the full grid's arrays."""
    sched = Scheduler(40, sigma_max=80.0, sigma_min=0.002)
    part = partial_scheduler(sched, 3.0)
    start = sched.num_steps - part.num_steps
    assert 0 < start < sched.num_steps
    for name in ("sigma_steps", "time_steps", "scaling_steps", "dsigma_steps"):
        assert len(getattr(part, name)) == part.num_steps + 1
        np.testing.assert_array_equal(getattr(part, name), getattr(sched, name)[start:])
    for name in ("factor_steps", "scaling_factor", "dt_steps"):
        assert len(getattr(part, name)) == part.num_steps
        np.testing.assert_array_equal(getattr(part, name), getattr(sched, name)[start:])
    # The full grid is untouched.
    assert len(sched.sigma_steps) == 41


# -- samplers against the analytic Gaussian solution ---------------------------------------------
TAU = 0.7
MU = torch.tensor([0.5, -1.0], dtype=torch.float64)


def _gaussian_net(tau=TAU):
    return AnalyticPrior(gaussian(MU, tau**2 * torch.eye(2, dtype=torch.float64)))


def _ode_exact(x_start, sched, tau=TAU):
    """Closed-form PF-ODE solution at the last grid point, in the scaled variable."""
    s0, s1 = float(sched.scaling_steps[0]), float(sched.scaling_steps[-1])
    sig0, sig1 = float(sched.sigma_steps[0]), float(sched.sigma_steps[-1])
    ratio = math.sqrt((tau**2 + sig1**2) / (tau**2 + sig0**2))
    return s1 * (MU + (x_start / s0 - MU) * ratio)


def _ode_rel_error(num_steps, solver, **kwargs):
    """Relative error of the ODE sampler's final state, measured on x - s*mu."""
    sched = Scheduler(num_steps, **kwargs)
    g = torch.Generator().manual_seed(1)
    x_start = torch.randn(16, 2, generator=g, dtype=torch.float64) * sched.sigma_max
    exact = _ode_exact(x_start, sched)
    out = sample(_gaussian_net(), x_start, sched, solver=solver, sde=False)
    centred = exact - float(sched.scaling_steps[-1]) * MU
    return ((out - exact).norm() / centred.norm()).item()


EDM = dict(sigma_max=80.0, sigma_min=0.002, schedule="linear", timestep="poly-7")
VP = dict(schedule="vp", timestep="vp", scaling="vp")


def test_heun_ode_matches_analytic_solution_edm():
    """Heun PF-ODE, 30 EDM steps, matches the closed-form Gaussian solution to 3%."""
    assert _ode_rel_error(30, "heun", **EDM) < 0.03


def test_euler_ode_is_less_accurate_than_heun_edm():
    """Euler with the same 30 EDM steps has a clearly (>3x) larger error than Heun."""
    assert _ode_rel_error(30, "euler", **EDM) > 3 * _ode_rel_error(30, "heun", **EDM)


def test_heun_ode_converges_faster_than_first_order():
    """Doubling Heun's steps (30 -> 60) cuts the error by more than 3x (order > 1)."""
    e30, e60 = _ode_rel_error(30, "heun", **EDM), _ode_rel_error(60, "heun", **EDM)
    assert e60 < e30 / 3


def test_euler_ode_converges_at_first_order():
    """Doubling Euler's steps (30 -> 60) cuts the error by roughly 2x (between 1.5x and 3x)."""
    e30, e60 = _ode_rel_error(30, "euler", **EDM), _ode_rel_error(60, "euler", **EDM)
    assert 1.5 < e30 / e60 < 3


def test_heun_ode_matches_analytic_solution_vp():
    """Heun PF-ODE on the VP grid (50 steps) matches the scaled closed form to 2e-3."""
    assert _ode_rel_error(50, "heun", **VP) < 2e-3


def test_euler_ode_vp_less_accurate_than_heun():
    """Euler on the same 50-step VP grid is >3x less accurate than Heun."""
    assert _ode_rel_error(50, "euler", **VP) > 3 * _ode_rel_error(50, "heun", **VP)


@pytest.fixture
def single_thread():
    """500 steps on (4000, 2) tensors: intra-op threads only add overhead (and thrash on a
    loaded 2-core machine), so run single-threaded and restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_sde_sampler_matches_gaussian_prior(solver):
    """Reverse SDE (VP, 500 steps) samples have the prior's mean and std within MC error."""
    tau, n, d = 0.5, 4000, 2
    net = _gaussian_net(tau)
    sched = Scheduler(500, **VP)
    s0, s1 = float(sched.scaling_steps[0]), float(sched.scaling_steps[-1])
    sig0, sig1 = float(sched.sigma_steps[0]), float(sched.sigma_steps[-1])
    g = torch.Generator().manual_seed(3)
    # Exact x_T ~ N(s0 mu, s0^2 (tau^2 + sig0^2) I).
    x_start = s0 * (
        MU + math.sqrt(tau**2 + sig0**2) * torch.randn(n, d, generator=g, dtype=torch.float64)
    )
    out = sample(net, x_start, sched, solver=solver, sde=True, rng=BatchRNG([5], rows_per_stream=n))
    std = s1 * math.sqrt(tau**2 + sig1**2)  # exact std of x at the last grid point
    # Per coordinate: SE(sample std) ~ std / sqrt(2n), SE(mean) = std / sqrt(n); 4.5 SE each,
    # plus 0.5% for the time discretisation.
    np.testing.assert_allclose(out.std(0).numpy(), std, rtol=4.5 / math.sqrt(2 * n) + 5e-3)
    np.testing.assert_allclose(out.mean(0).numpy(), s1 * MU.numpy(), atol=4.5 * std / math.sqrt(n))


def test_sde_sampler_requires_rng_and_valid_solver():
    """sample() rejects sde=True without an rng and unknown solver names."""
    sched = Scheduler(3)
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError):
        sample(_gaussian_net(), x, sched, sde=True)
    with pytest.raises(ValueError):
        sample(_gaussian_net(), x, sched, solver="rk4")
