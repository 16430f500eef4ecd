"""FISTA-TV: the TV operators, the FGP proximal map, and the outer loop on exact cases."""

from __future__ import annotations

import pytest
import torch

from algo.fista_tv import FISTATV, grad2d, grad2d_adjoint, total_variation, tv_prox
from inverse_problems.base import Observation
from inverse_problems.linear import PixelSubsample

F64 = torch.float64


def noisy_square(n=16, seed=0, rows=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(rows, 1, n, n, dtype=F64)
    x[:, :, 4:12, 5:11] = 0.8
    return x + 0.1 * torch.randn(x.shape, dtype=F64, generator=g)


def prox_objective(x, b, lam):
    return 0.5 * (x - b).square().flatten(1).sum(1) + lam * total_variation(x)


def test_difference_operator_adjoint():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 7, 9, dtype=F64, generator=g)
    ph, pw = (torch.randn(3, 2, 7, 9, dtype=F64, generator=g) for _ in range(2))
    dh, dw = grad2d(x)
    ph[..., -1, :] = 0  # the last row / column of a difference is zero by definition
    pw[..., :, -1] = 0
    lhs = (dh * ph + dw * pw).sum()
    torch.testing.assert_close(lhs, (x * grad2d_adjoint(ph, pw)).sum())


def test_tv_prox_is_the_minimizer():
    b = noisy_square()
    lam = 0.05
    x, _ = tv_prox(b, lam, 300)
    best = prox_objective(x, b, lam)
    g = torch.Generator().manual_seed(2)
    for scale in (1e-2, 1e-3):
        for _ in range(5):
            pert = x + scale * torch.randn(x.shape, dtype=F64, generator=g)
            assert torch.all(prox_objective(pert, b, lam) >= best - 1e-9)
    assert torch.all(best < prox_objective(b, b, lam))  # TV did something
    # constants are fixed points; a huge weight gives the mean (TV's minimizer with the data)
    c = torch.full_like(b, 0.3)
    torch.testing.assert_close(tv_prox(c, lam, 50)[0], c)
    flat, _ = tv_prox(b, 1e3, 2000)
    torch.testing.assert_close(flat, b.mean((2, 3), keepdim=True).expand_as(b), atol=1e-4, rtol=0)
    boxed, _ = tv_prox(b, lam, 50, bounds=(0.0, 0.5))
    assert boxed.min() >= 0.0 and boxed.max() <= 0.5


class Net:
    shape = (1, 16, 16)


@pytest.mark.parametrize("lam", [0.0, 0.1])
def test_fista_with_identity_operator_is_the_tv_prox(lam):
    """A = I (every pixel observed): argmin ||x - y||^2 + lam TV(x) = prox of (lam / 2) TV."""
    op = PixelSubsample(shape=(1, 16, 16))
    y = noisy_square(rows=2).reshape(2, -1)
    obs = Observation(y, {"indices": torch.arange(256).expand(2, -1)})
    algo = FISTATV(Net(), op, lam=lam, num_iters=300, tv_iters=50, bounds=None)
    x = algo.inference(obs, num_samples=3)
    assert x.shape == (6, 1, 16, 16)
    expected, _ = tv_prox(y.reshape(2, 1, 16, 16), lam / 2, 2000)
    torch.testing.assert_close(x[::3].double(), expected, atol=2e-4, rtol=0)
    torch.testing.assert_close(x[0], x[2])  # samples of an item are the same estimate


def test_fista_needs_a_linear_operator():
    from inverse_problems.navier_stokes import ForwardNavierStokes2d

    op = ForwardNavierStokes2d(resolution=16, differentiable=True)
    with pytest.raises(ValueError, match="linear"):
        FISTATV(Net(), op)
