"""Multi-coil MRI against the reference's own numbers (tests/fixtures/reference/mri_*.npz, made by
scripts/reference_fixtures/mri.py): line masks, observation, forward, loss, gradient and the
evaluator, in ``compat='reference'``; ``compat='corrected'`` differs only in the equispaced line
count and in the data misfit of several samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval import MRI
from inverse_problems.base import Observation
from inverse_problems.multi_coil_mri import MultiCoilMRI, line_mask
from tests.parity import load_fixture, rel_err

torch.set_num_threads(1)

MASK_META, MASKS = load_fixture("mri_masks")
CASES = [
    (lines, R, pattern, seed)
    for lines in MASK_META["lines"]
    for R in MASK_META["R"]
    for pattern in ("random", "equispaced")
    for seed in MASK_META["seeds"]
]


@pytest.mark.parametrize("lines, R, pattern, seed", CASES)
def test_masks_are_the_references(lines, R, pattern, seed):
    """The same ``mask_seed`` gives the reference's lines in both modes (the random draw is no
    fix); the equispaced count differs in corrected mode only (the budget floor(lines / R))."""
    theirs = MASKS[f"mask_{lines}_{R}_{pattern}_{seed}"].astype(bool)
    state = np.random.get_state()  # noqa: NPY002  (the global state must stay as it was)
    ref = MultiCoilMRI(lines, R, pattern, mask_seed=seed, compat="reference")
    fixed = MultiCoilMRI(lines, R, pattern, mask_seed=seed, compat="corrected")
    after = np.random.get_state()  # noqa: NPY002
    assert all(np.array_equal(a, b) for a, b in zip(state[1:], after[1:], strict=True))
    assert state[0] == after[0]  # numpy's global RNG untouched
    np.testing.assert_array_equal(ref.lines.numpy(), theirs)
    if pattern == "random":
        np.testing.assert_array_equal(fixed.lines.numpy(), theirs)
        assert int(theirs.sum()) == lines // R
    else:
        assert int(fixed.lines.sum()) == lines // R < int(theirs.sum())  # e.g. 80 vs 99 at 320/4
        # the ACS block is the same; corrected spreads floor(lines / R) lines evenly instead
        acs = theirs & fixed.lines.numpy()
        assert acs.sum() >= np.floor((0.08 if R <= 6 else 0.04) * lines)


def test_equispaced_reference_count():
    """The reference's equispaced pattern at 320 lines: 25 ACS + every 4th of the other 295."""
    assert int(line_mask(320, 4, "equispaced", compat="reference").sum()) == 25 + 74
    assert int(line_mask(320, 4, "equispaced", compat="corrected").sum()) == 80


def test_torch_generator_still_draws_masks():
    g = torch.Generator().manual_seed(0)
    a, b = line_mask(64, 4, "random", g), line_mask(64, 4, "random", g)
    assert int(a.sum()) == int(b.sum()) == 16 and not torch.equal(a, b)
    with pytest.raises(ValueError, match="generator"):
        line_mask(64, 4, "random")


OP_META, OP = load_fixture("mri_operator")


@pytest.mark.parametrize("compat", ["reference", "corrected"])
@pytest.mark.parametrize("orientation", ["vertical", "horizontal"])
def test_operator_is_the_references(orientation, compat):
    """Observation (masked raw k-space), forward, loss and gradient on the reference's inputs; the
    operator is the same in both modes. Measured: 0 (observation, forward, loss), 2.3e-16
    (gradient)."""
    p = orientation[0]
    lines = OP_META["W"] if orientation == "vertical" else OP_META["H"]
    op = MultiCoilMRI(
        lines,
        OP_META["R"],
        OP_META["pattern"],
        orientation,
        mask_seed=OP_META["mask_seed"],
        compat=compat,
    )
    mask = op.default_mask()
    np.testing.assert_array_equal(mask.numpy(), OP[f"{p}_mask"].reshape(mask.shape))
    maps = torch.from_numpy(OP[f"{p}_maps"])
    data = {"maps": maps, "kspace": torch.from_numpy(OP[f"{p}_kspace"])}
    obs = op(data, rng=None)
    assert rel_err(obs.y.numpy(), OP[f"{p}_y"]) == 0.0
    x = torch.from_numpy(OP[f"{p}_x"])
    assert rel_err(op.forward(x, **obs.physics).numpy(), OP[f"{p}_forward"]) < 1e-14  # measured 0
    assert rel_err(op.loss(x, obs).numpy(), OP[f"{p}_loss"]) < 1e-14  # measured 0
    grad, loss = op.gradient(x, obs, return_loss=True)
    assert rel_err(grad.numpy(), OP[f"{p}_grad"]) < 1e-14  # measured 2.3e-16
    assert rel_err(loss.sum().numpy(), OP[f"{p}_loss_sum"]) < 1e-14  # measured 0


EVAL_META, EV = load_fixture("mri_eval")


def mri_problem(compat):
    op = MultiCoilMRI(
        EVAL_META["W"], EVAL_META["R"], mask_seed=EVAL_META["mask_seed"], compat=compat
    )
    maps = torch.from_numpy(EV["e_maps"])
    obs = Observation(torch.from_numpy(EV["e_y"]), {"maps": maps, "mask": op.default_mask()})
    return op, obs


@pytest.mark.parametrize("compat", ["reference", "corrected"])
def test_evaluator_one_sample(compat):
    """N = 1 (the paper's setting): the same in both modes. Measured: 0 for all three."""
    op, obs = mri_problem(compat)
    target = torch.from_numpy(EV["e_target"])
    values = MRI(op, compat)(torch.from_numpy(EV["e_pred_1"]), target, obs)
    assert rel_err(values["psnr"], EV["e_psnr_1"]) < 1e-12
    assert rel_err(values["ssim"], EV["e_ssim_1"]) < 1e-12
    assert rel_err(values["data misfit"], EV["e_data_misfit_1"]) < 1e-12


def test_evaluator_four_samples():
    """N = 4: the reference's data misfit is one norm over all samples' residuals (reference mode
    gives it; corrected averages the per-sample norms, a smaller number); its psnr and ssim are 0
    (its batching gives nothing for 1 < N < 32): both modes average the per-sample values."""
    target = torch.from_numpy(EV["e_target"])
    pred = torch.from_numpy(EV["e_pred_4"])
    op, obs = mri_problem("reference")
    ref = MRI(op, "reference")(pred, target, obs)
    assert rel_err(ref["data misfit"], EV["e_data_misfit_4"]) < 1e-12  # measured 1.5e-16
    assert float(EV["e_psnr_4"]) == 0.0 and float(EV["e_ssim_4"]) == 0.0
    singles = [MRI(op, "reference")(pred[i : i + 1], target, obs) for i in range(4)]
    assert ref["psnr"] == pytest.approx(np.mean([s["psnr"] for s in singles]), rel=1e-12)
    cor = MRI(op, "corrected")(pred, target, obs)
    assert cor["data_misfit"] == pytest.approx(np.mean([s["data_misfit"] for s in singles]))
    assert cor["data_misfit"] < ref["data_misfit"]
    assert ref["psnr"] == cor["psnr"] and ref["ssim"] == cor["ssim"]
