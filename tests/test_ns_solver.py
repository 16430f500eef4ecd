"""Tests of the pseudo-spectral Navier–Stokes solver (inverse_problems/ns_solver.py).

Measured errors quoted in comments are from torch 2.14 on CPU; tolerances leave headroom.
"""

import math

import pytest
import torch

from inverse_problems.ns_solver import NavierStokes2d, kolmogorov_forcing, smooth_random_field


def grid(s, L=2 * math.pi):
    t = torch.arange(s, dtype=torch.float64) * (L / s)
    return torch.meshgrid(t, t, indexing="ij")  # x varies along axis 0, y along axis 1


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def taylor_green(s, k, amp=1.0):
    # ψ = (amp/k) cos(kx)cos(ky) gives w = −Δψ = 2 k amp cos(kx)cos(ky) and u = ψ_y, v = −ψ_x.
    # w is an eigenfunction of Δ (eigenvalue −2k²) and w ∝ ψ, so u·∇w = u·∇ψ·2k² = 0 exactly:
    # the flow only diffuses, w(t) = w(0) exp(−2 k² t / Re).
    x, y = grid(s)
    return 2 * k * amp * torch.cos(k * x) * torch.cos(k * y)


def test_taylor_green_decay():
    Re, k, T, dt = 100.0, 1, 1.0, 1e-3
    lam = 2 * k**2 / Re
    solver = NavierStokes2d(32, 32, Re=Re)
    w0 = taylor_green(32, k)[None]
    exact = w0 * math.exp(-lam * T)
    w = solver.solve(w0, None, T, delta_t=dt, adaptive=False)
    # The advection term vanishes to round-off, so the solver reproduces the Crank–Nicolson
    # amplification ((1 − λΔt/2)/(1 + λΔt/2))^n exactly: measured 1.6e-15.
    cn = w0 * ((1 - lam * dt / 2) / (1 + lam * dt / 2)) ** round(T / dt)
    assert rel(w, cn) < 1e-13
    # Against the exact decay, the error is CN's (λΔt)³/12 per step: measured 6.7e-13.
    assert rel(w, exact) < 2e-12
    # Adaptive: Δt = 0.5h/max|u| = 1/64 (CFL-limited), 64 steps; measured 1.7e-10.
    assert rel(solver.solve(w0, None, T), exact) < 1e-9


def test_kolmogorov_forcing_axis_and_spinup():
    s, Re, k, amp = 32, 50.0, 4, -4.0
    f = kolmogorov_forcing(s, k=k, amplitude=amp)
    _, y = grid(s)
    torch.testing.assert_close(f, amp * torch.cos(k * y))  # varies along the last axis (y)
    solver = NavierStokes2d(s, s, Re=Re)
    # From rest, w(t) = (amp Re/k²)(1 − exp(−k² t/Re)) cos(ky); u·∇w = 0 along the way.
    T = 0.5
    w = solver.solve(torch.zeros(1, s, s), f, T, delta_t=1e-3, adaptive=False)
    exact = amp * Re / k**2 * (1 - math.exp(-(k**2) * T / Re)) * torch.cos(k * y)
    assert rel(w[0], exact) < 1e-6  # measured 3.4e-8 (second-order CN time error)
    # The steady state amp·Re/k² cos(ky) stays put (adaptive mode, diffusion-limited Δt).
    w_ss = (amp * Re / k**2 * torch.cos(k * y))[None]
    assert rel(solver.solve(w_ss, f, 1.0), w_ss) < 1e-12  # measured 6e-16


def test_dealias_mask():
    s1, s2 = 48, 32
    solver = NavierStokes2d(s1, s2)
    n1 = torch.fft.fftfreq(s1, 1 / s1)[:, None].expand(s1, s2 // 2 + 1)
    n2 = torch.fft.rfftfreq(s2, 1 / s2)[None, :].expand(s1, s2 // 2 + 1)
    ones = torch.ones(1, s1, s2 // 2 + 1, dtype=torch.complex128)
    kept = solver.dealias(ones)[0].real
    inner = (n1.abs() <= s1 / 3) & (n2.abs() <= s2 / 3)
    inner[0, 0] = False  # the mean is dropped too (u·∇w does not depend on it)
    assert (kept[inner] == 1).all()  # the 2/3 square survives
    outer = n1**2 + n2**2 > (s1 / 3) ** 2 + (s2 / 3) ** 2
    assert (kept[outer] == 0).all() and kept[0, 0] == 0
    assert (kept[n1.abs() == s1 // 2] == 0).all()  # every Nyquist / top-third mode on the axes
    # The nonlinear term of a field made only of masked-out modes is exactly zero.
    g = torch.Generator().manual_seed(0)
    w_h = torch.randn(2, s1, s2 // 2 + 1, generator=g, dtype=torch.complex128) * (kept == 0)
    nonlin, _ = solver.nonlinear_term(w_h)
    assert nonlin.abs().max() == 0


def test_advection_forms_agree_without_aliasing():
    """Basdevant's (∂x² − ∂y²)(uv) + ∂x∂y(v² − u²) equals the flux form ∂x(uw) + ∂y(vw) whenever
    the grid products are exact: fields with |n_i| < s/4 have products below the Nyquist mode."""
    s = 32
    n1 = torch.fft.fftfreq(s, 1 / s)[:, None].abs()
    n2 = torch.fft.rfftfreq(s, 1 / s)[None, :]
    g = torch.Generator().manual_seed(7)
    w_h = torch.randn(3, s, s // 2 + 1, generator=g, dtype=torch.complex128)
    w_h = torch.fft.rfft2(torch.fft.irfft2(w_h * ((n1 < s / 4) & (n2 < s / 4)), s=(s, s)))
    f_h = torch.fft.rfft2(kolmogorov_forcing(s))
    flux = NavierStokes2d(s, s, advection="flux").nonlinear_term(w_h, f_h, speed=True)
    basdevant = NavierStokes2d(s, s).nonlinear_term(w_h, f_h, speed=True)
    assert rel(basdevant[0], flux[0]) < 1e-13  # measured 1.5e-19
    torch.testing.assert_close(basdevant[1], flux[1], rtol=1e-13, atol=0)  # same max|u|²
    with pytest.raises(ValueError, match="advection"):
        NavierStokes2d(s, s, advection="upwind")


def upsample(w, S):
    """Spectral interpolation of (B, s, s) fields to S x S (Nyquist modes dropped)."""
    s, w_h = w.shape[-1], torch.fft.rfft2(w)
    out = torch.zeros(w.shape[0], S, S // 2 + 1, dtype=w_h.dtype)
    out[:, : s // 2, : s // 2] = w_h[:, : s // 2, : s // 2]
    out[:, -s // 2 + 1 :, : s // 2] = w_h[:, -s // 2 + 1 :, : s // 2]
    return torch.fft.irfft2(out * (S / s) ** 2, s=(S, S))


def test_advection_forms_differ_below_the_discretisation_error():
    """Where products alias, the two forms differ, by less than the grid's own error: at 32² both
    are equally far from the same flow solved on a 64² grid (itself 14x more accurate)."""
    s = 32
    g = torch.Generator().manual_seed(8)
    w0 = upsample(10 * smooth_random_field(2, s, generator=g), s)
    fine = NavierStokes2d(2 * s, 2 * s, Re=200.0, advection="flux")
    truth = fine.solve(upsample(w0, 2 * s), kolmogorov_forcing(2 * s), 1.0)[:, ::2, ::2]
    f = kolmogorov_forcing(s)
    basdevant = NavierStokes2d(s, s, Re=200.0).solve(w0, f, 1.0)
    flux = NavierStokes2d(s, s, Re=200.0, advection="flux").solve(w0, f, 1.0)
    err_b, err_f = rel(basdevant, truth), rel(flux, truth)
    # Measured: forms 0.114 apart; grid errors 0.243 (basdevant) and 0.252 (flux).
    assert rel(basdevant, flux) < 0.5 * err_f
    assert abs(err_b - err_f) < 0.1 * err_f


def test_mean_vorticity_conserved():
    s = 32
    g = torch.Generator().manual_seed(1)
    w0 = 10 * smooth_random_field(2, s, generator=g) + torch.tensor([0.7, -1.3])[:, None, None]
    solver = NavierStokes2d(s, s, Re=200.0)
    w = solver.solve(w0, kolmogorov_forcing(s), 1.0)
    # Measured drift 0 (at most round-off of rfft2/irfft2).
    torch.testing.assert_close(w.mean((-2, -1)), w0.mean((-2, -1)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("adaptive", [False, True])
def test_batch_equals_individual(adaptive):
    s = 32
    g = torch.Generator().manual_seed(2)
    w0 = 10 * smooth_random_field(3, s, generator=g)
    w0[1] *= 0.3  # very different speeds: per-element Δt must not couple the elements
    solver = NavierStokes2d(s, s, Re=200.0)
    f = kolmogorov_forcing(s)
    batch = solver.solve(w0, f, 0.5, delta_t=5e-3, adaptive=adaptive, check_every=5)
    for b in range(3):
        alone = solver.solve(w0[b : b + 1], f, 0.5, delta_t=5e-3, adaptive=adaptive)
        # Measured max difference 1.2e-14 (only batched-vs-single FFT round-off).
        torch.testing.assert_close(batch[b : b + 1], alone, rtol=0, atol=1e-12)


def test_adaptive_batch_costs_the_sum_of_its_elements_steps():
    """Elements that reached T leave the batch at the next check: the batch's element-steps are
    the sum of the elements' own step counts plus at most check_every − 1 idle steps each."""
    s, k = 32, 5
    g = torch.Generator().manual_seed(9)
    w0 = 10 * smooth_random_field(3, s, generator=g)
    w0[0] *= 0.2  # a slow flow: few, long steps
    solver = NavierStokes2d(s, s, Re=200.0)
    f = kolmogorov_forcing(s)
    element_steps = []
    original = solver._step

    def counting(w_h, *args):
        element_steps.append(w_h.shape[0])
        return original(w_h, *args)

    solver._step = counting
    alone = []
    for b in range(3):
        element_steps.clear()
        solver.solve(w0[b : b + 1], f, 0.5, check_every=1)
        alone.append(sum(element_steps))
    element_steps.clear()
    solver.solve(w0, f, 0.5, check_every=k)
    assert alone[0] < alone[1] / 2  # measured 33, 111, 135 steps; batch 285 element-steps
    assert sum(alone) <= sum(element_steps) <= sum(alone) + 3 * (k - 1)
    assert sum(element_steps) < 3 * max(alone)


@pytest.mark.parametrize("adaptive", [False, True])
def test_batch_gradient_equals_individual(adaptive):
    s = 16
    g = torch.Generator().manual_seed(10)
    w0 = 5 * smooth_random_field(3, s, generator=g)
    w0[1] *= 0.2  # leaves the adaptive batch early
    weight = torch.randn(3, s, s, generator=g, dtype=torch.float64)
    solver = NavierStokes2d(s, s, Re=100.0)
    f = kolmogorov_forcing(s)

    def grad(w, weight):
        w = w.clone().requires_grad_(True)
        out = solver.solve(w, f, 0.1, delta_t=1e-2, adaptive=adaptive, check_every=2)
        (out * weight).sum().backward()
        return w.grad

    batch = grad(w0, weight)
    for b in range(3):
        alone = grad(w0[b : b + 1], weight[b : b + 1])
        # Measured max difference 9e-16 (gradients of size 3.3).
        torch.testing.assert_close(batch[b : b + 1], alone, rtol=0, atol=1e-12)


def test_chunked_inverse_transforms_change_nothing(monkeypatch):
    """On CPU large inverse transforms are split into calls of _CPU_C2R_CHUNK_BYTES; splitting
    (here into uneven calls of 3 fields) must not change the result."""
    import inverse_problems.ns_solver as ns_solver

    s = 16
    w0 = 10 * smooth_random_field(5, s, generator=torch.Generator().manual_seed(11))
    f = kolmogorov_forcing(s)
    solver = NavierStokes2d(s, s, Re=200.0)
    whole = solver.solve(w0, f, 0.2)
    field_bytes = s * (s // 2 + 1) * 16  # complex128
    monkeypatch.setattr(ns_solver, "_CPU_C2R_CHUNK_BYTES", 3 * field_bytes)
    torch.testing.assert_close(solver.solve(w0, f, 0.2), whole, rtol=0, atol=1e-12)


def test_fixed_vs_adaptive_agree():
    s = 64
    g = torch.Generator().manual_seed(3)
    w0 = 10 * smooth_random_field(2, s, generator=g)
    solver = NavierStokes2d(s, s, Re=200.0)
    f = kolmogorov_forcing(s)
    fixed = solver.solve(w0, f, 1.0, delta_t=5e-4, adaptive=False)  # own error 7.5e-6
    adaptive = solver.solve(w0, f, 1.0)  # CFL-limited Δt of about 2e-3
    # Measured relative L2 difference 1.2e-4, the second-order time error of the adaptive run
    # (fixed Δt = 2e-3 is 1.6e-4 away from a Δt = 2.5e-4 run).
    assert rel(adaptive, fixed) < 5e-4


@pytest.mark.parametrize("adaptive", [False, True])
def test_float32_close_to_float64(adaptive):
    s = 64
    g = torch.Generator().manual_seed(4)
    w0 = 10 * smooth_random_field(2, s, generator=g)
    f = kolmogorov_forcing(s)
    w64 = NavierStokes2d(s, s, Re=200.0).solve(w0, f, 1.0, delta_t=2e-3, adaptive=adaptive)
    solver32 = NavierStokes2d(s, s, Re=200.0, dtype=torch.float32)
    w32 = solver32.solve(w0.float(), f.float(), 1.0, delta_t=2e-3, adaptive=adaptive)
    assert w32.dtype == torch.float32 and w32.shape == w0.shape
    assert rel(w32.double(), w64) < 1e-4  # measured 1.9e-5 (fixed) / 7.5e-6 (adaptive)


def test_output_dtype_follows_input():
    solver = NavierStokes2d(16, 16, dtype=torch.float32)
    w = solver.solve(torch.zeros(2, 16, 16, dtype=torch.float64), None, 0.1)
    assert w.dtype == torch.float64 and w.shape == (2, 16, 16)
    with pytest.raises(ValueError):
        solver.solve(torch.zeros(16, 16), None, 0.1)


@pytest.mark.parametrize("adaptive", [False, True])
def test_gradient_matches_finite_difference(adaptive):
    s = 16
    g = torch.Generator().manual_seed(5)
    w0 = 5 * smooth_random_field(1, s, generator=g)
    v = smooth_random_field(1, s, generator=g)
    weight = torch.randn(1, s, s, generator=g, dtype=torch.float64)
    solver = NavierStokes2d(s, s, Re=100.0)
    f = kolmogorov_forcing(s)

    def loss(w):
        return (solver.solve(w, f, 0.05, delta_t=1e-2, adaptive=adaptive) * weight).sum()

    w = w0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(w), w)
    eps = 1e-5
    fd = (loss(w0 + eps * v) - loss(w0 - eps * v)) / (2 * eps)
    # Fixed Δt: measured relative difference 4e-11 (central-difference error). Adaptive: the
    # step size is detached, so the FD also sees Δt(w0) move; still agrees to 4e-6.
    tol = 1e-7 if not adaptive else 1e-4
    assert abs((grad * v).sum().item() - fd.item()) < tol * abs(fd.item())


def test_zero_time_and_finishes_exactly_at_T():
    s = 16
    solver = NavierStokes2d(s, s, Re=100.0)
    w0 = taylor_green(s, 1)[None]
    torch.testing.assert_close(solver.solve(w0, None, 0.0), w0)
    # T not a multiple of Δt: the shortened last step still lands on T.
    w = solver.solve(w0, None, 0.0123, delta_t=1e-3, adaptive=False)
    assert rel(w, w0 * math.exp(-2 * 0.0123 / 100.0)) < 1e-12


def test_adaptive_step_gives_up_on_runaway_elements():
    """An element whose CFL step would take millions of steps comes back as NaN after max_steps;
    the other elements of the batch are unaffected."""
    s = 16
    solver = NavierStokes2d(s, s, Re=100.0)
    w0 = torch.stack([taylor_green(s, 1), 1e7 * taylor_green(s, 1)])
    w = solver.solve(w0, None, 0.05, adaptive=True, max_steps=200)
    assert torch.isnan(w[1]).all()
    torch.testing.assert_close(w[0], solver.solve(w0[:1], None, 0.05, adaptive=True)[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    s = 32
    g = torch.Generator().manual_seed(6)
    w0 = 10 * smooth_random_field(2, s, generator=g)
    f = kolmogorov_forcing(s)
    cpu = NavierStokes2d(s, s, Re=200.0).solve(w0, f, 0.5)
    gpu = NavierStokes2d(s, s, Re=200.0, device="cuda").solve(w0.cuda(), f.cuda(), 0.5)
    assert rel(gpu.cpu(), cpu) < 1e-10
