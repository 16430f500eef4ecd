"""Navier–Stokes against the reference's own outputs (tests/fixtures/reference/navier_stokes.npz,
made by scripts/reference_fixtures/navier_stokes.py): compat=reference solves with the reference's
(flux) form of the advection term and gives its forward map, noisy observation and loss to float32
rounding; compat=corrected (Basdevant's form) stays within the forms' known difference."""

from __future__ import annotations

import pytest
import torch

from inverse_problems.base import Observation
from inverse_problems.navier_stokes import ForwardNavierStokes2d
from tests.parity import load_fixture, rel_err
from utils.rng import ReplayRNG

META, ARRAYS = load_fixture("navier_stokes")
CASES = {c["name"]: c for c in META["cases"]}


def operator(case, compat):
    return ForwardNavierStokes2d(
        resolution=case["resolution"], forward_time=case["forward_time"], Re=case["Re"],
        downsample_factor=case["downsample_factor"], delta_t=case["delta_t"],
        adaptive=case["adaptive"], sigma_noise=case["sigma_noise"], dtype=case["dtype"],
        unnorm_scale=case["unnorm_scale"], compat=compat,
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_mode_gives_the_reference_forward_map_observation_and_loss(name):
    case = CASES[name]
    a = {k[len(name) + 1 :]: v for k, v in ARRAYS.items() if k.startswith(name + "_")}
    assert a, name
    op = operator(case, "reference")
    x = torch.as_tensor(a["x"])
    y = op.forward(x)
    # Measured: float32 1.3e-6 (adaptive 128^2) to 3.6e-6 (fixed 64^2), rounding amplified over
    # hundreds of steps; float64 2.6e-8, which is the float32 cast the reference applies to every
    # output (its forward ends in .to(torch.float32)): the arithmetic is the same.
    tol = 1e-5 if case["dtype"] == "float32" else 6e-8
    assert rel_err(y.numpy(), a["y"]) < tol
    obs = op({"target": x}, ReplayRNG([torch.as_tensor(a["noise"])], rows=1))
    assert rel_err(obs.y.numpy(), a["y_noisy"]) < tol
    loss = op.loss(torch.as_tensor(a["x2"]), Observation(torch.as_tensor(a["y_noisy"])))
    assert rel_err(loss.numpy(), a["loss"]) < 10 * tol


def test_corrected_mode_uses_basdevant_form_within_the_forms_difference():
    case = CASES["adaptive128"]
    x = torch.as_tensor(ARRAYS["adaptive128_x"])
    ours = operator(case, "corrected")
    assert ours.solver.advection == "basdevant"
    assert operator(case, "reference").solver.advection == "flux"
    err = rel_err(ours.forward(x).numpy(), ARRAYS["adaptive128_y"])
    assert 1e-6 < err < 1e-3  # measured 5.1e-6 (T = 0.2): the two advection forms at 128^2


def test_the_evaluator_reports_the_reference_key():
    from eval import NavierStokes2d

    x = torch.as_tensor(ARRAYS["adaptive64_y"])
    values = NavierStokes2d()(x * 1.1, x)
    assert values["relative l2"] == values["relative_l2"] == pytest.approx(0.1)


@pytest.mark.parametrize("n", [1, 4])
def test_the_evaluator_gives_the_reference_relative_l2(n):
    """The reference's NavierStokes2d evaluator (mean over the item's samples)."""
    from eval import NavierStokes2d

    pred = torch.as_tensor(ARRAYS[f"eval{n}_pred"])
    values = NavierStokes2d(compat="reference")(pred, torch.as_tensor(ARRAYS["eval_target"]))
    # measured: 0 (same float64 arithmetic)
    assert values["relative l2"] == pytest.approx(float(ARRAYS[f"eval{n}_relative_l2"]), rel=1e-12)
