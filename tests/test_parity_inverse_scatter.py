"""Inverse scattering against the reference's own numbers (tests/fixtures/reference/
inverse_scatter_*.npz, made by scripts/reference_fixtures/inverse_scatter.py).

``compat='reference'`` takes the reference's conjugated incident field and its half-cell-shifted
grid, and then gives its observation (same noise), forward, loss, gradient, singular values and
SVD pieces, at inv-scatter-small's size and (forward) at the paper's; ``compat='corrected'``
(incident field, centred grid) gives uncorrelated measurements. The noise model is the same in
both: CN(0, sigma^2), sigma / sqrt(2) per part, as the reference's ``sigma * randn_like(complex)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval import InverseScatter as InverseScatterEval
from inverse_problems.base import Observation
from inverse_problems.inverse_scatter import InverseScatter
from tests.parity import load_fixture, rel_err
from utils.rng import ReplayRNG

torch.set_num_threads(1)

GEOMETRY = ("Lx", "Ly", "Nx", "Ny", "wave", "numRec", "numTrans", "sensorRadius")
META, SMALL = load_fixture("inverse_scatter_small")
PAPER_META, PAPER = load_fixture("inverse_scatter_paper")
SCALE = META["unnorm_scale"]


def build(meta, compat, **kw):
    return InverseScatter(
        **{k: meta[k] for k in GEOMETRY},
        sigma_noise=meta["sigma_noise"],
        unnorm_shift=meta["unnorm_shift"],
        unnorm_scale=meta["unnorm_scale"],
        compat=compat,
        **kw,
    )


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    cache = tmp_path_factory.mktemp("svd-cache")
    return {c: build(META, c, cache_dir=str(cache)) for c in ("reference", "corrected")}


def as_complex(y: torch.Tensor) -> np.ndarray:
    return torch.view_as_complex(y.contiguous()).numpy()


def correlation(a, b) -> float:
    a, b = np.ravel(a), np.ravel(b)
    return float(abs(np.vdot(a, b)) / np.linalg.norm(a) / np.linalg.norm(b))


def observe(op):
    """The reference's observation draws sigma * n with n = randn_like(complex): per part
    N(0, 1/2). Ours draws real N(0, 1) per part and scales by sigma / sqrt(2): the same noise is
    sqrt(2) * view_as_real(n)."""
    noise = torch.view_as_real(torch.from_numpy(SMALL["noise"])) * 2**0.5
    rng = ReplayRNG([noise], rows=1)
    obs = op({"target": torch.from_numpy(SMALL["x"])}, rng)
    assert rng.remaining == 0
    return obs


def test_forward_and_observation(ops):
    """Measured: forward 2.3e-14, observation 2.3e-14, its noise 3e-16 (reference mode); the
    corrected forward is uncorrelated with the reference's (1.40 relative, correlation 0.004)."""
    x = torch.from_numpy(SMALL["x"])
    ref, cor = ops["reference"], ops["corrected"]
    assert rel_err(as_complex(ref.forward(x)), SMALL["forward"]) < 1e-12
    theirs_noise = SMALL["y"] - SMALL["forward"]
    for op in (ref, cor):
        obs = observe(op)
        ours_noise = as_complex(obs.y) - as_complex(op.forward(x))
        assert rel_err(ours_noise, theirs_noise) < 1e-12  # same noise model in both modes
    assert rel_err(as_complex(observe(ref).y), SMALL["y"]) < 1e-12
    corrected = as_complex(cor.forward(x))
    assert rel_err(corrected, SMALL["forward"]) > 1.0
    assert correlation(corrected, SMALL["forward"]) < 0.05


def test_loss_and_gradient(ops):
    """Measured (reference mode): loss 1.7e-15, gradient 8.6e-15; corrected: gradient 3 %."""
    pred = torch.from_numpy(SMALL["pred"])
    for compat, op in ops.items():
        obs = observe(op)
        loss = op.loss(pred, obs).numpy()
        grad, summed = op.gradient(pred, obs, return_loss=True)
        if compat == "reference":
            assert rel_err(loss, SMALL["loss"]) < 1e-12
            assert rel_err(summed.sum().numpy(), SMALL["loss_sum"]) < 1e-12
            assert rel_err(grad.numpy(), SMALL["grad"]) < 1e-12
        else:
            assert rel_err(grad.numpy(), SMALL["grad"]) > 1e-2


def test_adjoint_in_reference_mode(ops):
    op = ops["reference"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64, generator=g)
    y = torch.randn(2, op.num_measurements, dtype=torch.float64, generator=g)
    lhs = (op.unnorm_scale * op.born(x.reshape(2, -1))).reshape(2, -1)
    lhs = (torch.view_as_real(lhs).reshape(2, -1) * y).sum()
    rhs = (x * op.adjoint(y)).sum()
    assert abs(float(lhs - rhs)) < 1e-12 * float(lhs.abs())


def test_singular_values_and_svd_pieces(ops):
    """Ours are of L = scale * A (normalized units), truncated at 1e-4 of the largest; the
    reference's of A, in full. Same rank k (628 of 1024) and mask M (454). Measured in reference
    mode: singular values 4.9e-10 together (7e-6 for the smallest kept: our Gram-matrix
    eigendecomposition squares their condition), projections onto the leading k right and left
    singular vectors 2.1e-6 and 2.4e-6, truncated pseudo-inverse 1.2e-5. Corrected mode: other
    singular values (4e-2 at the small end) and left singular vectors (projection 1.15)."""
    ref, cor = ops["reference"], ops["corrected"]
    k = int(SMALL["k"])
    S = ref.singular_values()[0].numpy() / SCALE
    assert S.size == k
    assert rel_err(S, SMALL["S"][:k]) < 1e-8
    assert np.max(np.abs(S / SMALL["S"][:k] - 1)) < 1e-4
    assert int(ref.M()[0].sum()) == int(SMALL["M"].sum())
    tx = torch.from_numpy(SMALL["test_x"])
    z = ref.Vt(tx.reshape(-1, 1, 32, 32))
    z[:, k:] = 0
    assert rel_err(ref.V(z).reshape(3, -1).numpy(), SMALL["proj_V"]) < 1e-5
    ty = torch.from_numpy(SMALL["test_y"])
    assert rel_err(ref.U(ref.Ut(ty)).numpy(), SMALL["proj_U"]) < 1e-5
    pinv = SCALE * ref.pseudo_inverse(ty).reshape(3, -1).numpy()  # A^+ = scale * L^+
    assert rel_err(pinv, SMALL["pinv_k"]) < 1e-4
    assert rel_err(cor.U(cor.Ut(ty)).numpy(), SMALL["proj_U"]) > 0.5


def test_svd_cache_is_keyed_by_mode(ops):
    ref, cor = ops["reference"], ops["corrected"]
    assert ref.svd_path() != cor.svd_path() and ref.svd_path().parent == cor.svd_path().parent
    assert "_reference_" in ref.svd_path().name and "_corrected_" in cor.svd_path().name
    again = build(META, "reference", cache_dir=str(ref.svd_path().parent))
    torch.testing.assert_close(again.singular_values(), ref.singular_values(), rtol=0, atol=0)


def test_paper_size_forward():
    """128^2, 20 x 360 (svd=False). Measured: forward 9.1e-14, loss 6.9e-15 (reference mode);
    corrected: 1.41 relative, correlation 7e-4."""
    x = torch.from_numpy(PAPER["x"])
    ref, cor = build(PAPER_META, "reference", svd=False), build(PAPER_META, "corrected", svd=False)
    assert rel_err(as_complex(ref.forward(x)), PAPER["forward"]) < 1e-12
    pred = torch.from_numpy(PAPER["pred"])
    y = torch.view_as_real(torch.from_numpy(PAPER["forward"]))

    loss = ref.loss(pred, Observation(y))
    assert rel_err(loss.numpy(), PAPER["loss"]) < 1e-10
    corrected = as_complex(cor.forward(x))
    assert rel_err(corrected, PAPER["forward"]) > 1.0
    assert correlation(corrected, PAPER["forward"]) < 0.05


EVAL_META, EV = load_fixture("inverse_scatter_eval")


@pytest.mark.parametrize("compat", ["reference", "corrected"])
@pytest.mark.parametrize("n", [1, 4])
def test_evaluator(compat, n):
    """The same in both modes. Measured: 0 (1 sample); psnr 2.6e-8, ssim 9e-8 (4 samples: the
    reference averages in float32, we in float64)."""
    ev = InverseScatterEval(None, compat)
    values = ev(torch.from_numpy(EV[f"pred_{n}"]), torch.from_numpy(EV["target"]))
    assert rel_err(values["psnr"], EV[f"psnr_{n}"]) < 1e-6
    assert rel_err(values["ssim"], EV[f"ssim_{n}"]) < 1e-6
