"""Shared operator properties, driven by a registry of (operator, per-item data) at small sizes."""

from __future__ import annotations

import pytest
import torch

from inverse_problems.base import Observation
from inverse_problems.linear import PixelSubsample, SVDLinear
from training.exact import LinearGMMProblems, PixelGRFProblems
from utils.distributions import grid_gmm, matern_field
from utils.results import collate
from utils.rng import BatchRNG


def _gmm_case():
    ds = LinearGMMProblems(grid_gmm(6), dim_y=3, num_items=3, seed=1)
    return SVDLinear(), ds


def _grf_case():
    ds = PixelGRFProblems(matern_field(size=8), num_obs=7, num_items=3, seed=2)
    return PixelSubsample(shape=(1, 8, 8), sigma_noise=0.1), ds


REGISTRY = {"svd-linear": _gmm_case, "pixel-subsample": _grf_case}


@pytest.fixture(params=sorted(REGISTRY))
def case(request):
    op, ds = REGISTRY[request.param]()
    data = collate([ds[i] for i in range(len(ds))])
    obs = op(data, BatchRNG.for_items(0, ds.id_list, 0))
    return op, data, obs


def _rows(data, n, gen):
    """n random rows per item, item-major, float64."""
    shape = data["target"].shape[1:]
    return torch.randn(data["target"].shape[0] * n, *shape, generator=gen, dtype=torch.float64)


def test_adjoint(case):
    """<A x, y> = <x, A^T y> per row, with each item's own matrix."""
    op, data, obs = case
    g = torch.Generator().manual_seed(0)
    x = _rows(data, 2, g)
    ax = op.forward(x, **obs.physics)
    y = torch.randn(ax.shape, generator=g, dtype=torch.float64)
    aty = op.adjoint(y, **obs.physics).reshape(x.shape)
    lhs = (ax * y).sum(1)
    rhs = (x * aty).flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)


def test_rows_use_their_items_physics(case):
    """Solving B items in one call equals solving each item alone."""
    op, data, obs = case
    g = torch.Generator().manual_seed(1)
    x = _rows(data, 3, g)
    together = op.loss(x, obs)
    alone = torch.cat([op.loss(x[3 * i : 3 * i + 3], obs.item(i)) for i in range(obs.batch)])
    torch.testing.assert_close(together, alone)


def test_gradient_taylor(case):
    """Taylor test: loss(x + h v) - loss(x) - h <grad, v> = O(h^2)."""
    op, data, obs = case
    g = torch.Generator().manual_seed(2)
    x, v = _rows(data, 2, g), _rows(data, 2, g)
    grad, loss = op.gradient(x, obs, return_loss=True)
    torch.testing.assert_close(loss, op.loss(x, obs))
    errs = []
    for h in (1e-2, 5e-3):
        lin = loss + h * (grad * v).flatten(1).sum(1)
        errs.append((op.loss(x + h * v, obs) - lin).abs())
    ratio = errs[0] / errs[1].clamp_min(1e-300)
    assert torch.all((ratio > 3.5) | (errs[0] < 1e-12)), ratio


def test_noise_statistics_and_seeding(case):
    """Observation noise has the declared std, and an item's noise ignores its batch-mates."""
    op, data, obs = case
    clean = op.forward(data["target"].double(), **obs.physics)
    std = op.noise_std(obs.physics, obs.batch)
    assert torch.all(std > 0)
    first = {k: v[:1] for k, v in data.items()}
    alone = op(first, BatchRNG.for_items(0, [0], 0))
    torch.testing.assert_close(alone.y, obs.y[:1])
    resid = (obs.y.double() - clean) / std[:, None]
    assert resid.abs().max() < 6


def test_svd_pieces():
    """U diag(S) Vt[:m] is the operator; V inverts Vt; the pseudo-inverse solves A x = y."""
    op, ds = _gmm_case()
    data = collate([ds[i] for i in range(len(ds))])
    phys = {k: data[k] for k in op.physics_keys}
    g = torch.Generator().manual_seed(3)
    x = _rows(data, 2, g)
    torch.testing.assert_close(op.V(op.Vt(x, **phys), **phys).reshape(x.shape), x)
    z = op.Vt(x, **phys)[:, : phys["S"].shape[1]]
    s = phys["S"].repeat_interleave(2, 0)
    torch.testing.assert_close(op.U(z * s, **phys), op.forward(x, **phys))
    y = op.forward(x, **phys)
    xp = op.pseudo_inverse(y, **phys)
    torch.testing.assert_close(op.forward(xp.reshape(x.shape), **phys), y)
    assert torch.all(op.Ut(y, **phys).norm(dim=1) > 0)


def test_pixel_pseudo_inverse():
    op, ds = _grf_case()
    data = collate([ds[i] for i in range(len(ds))])
    y = op.forward(data["target"], indices=data["indices"])
    x = op.pseudo_inverse(y, indices=data["indices"])
    torch.testing.assert_close(op.forward(x, indices=data["indices"]), y)
    assert x.shape == data["target"].shape


def test_row_grouping_error():
    """Rows that do not split evenly over the items fail with a message saying why."""
    op, ds = _gmm_case()
    data = collate([ds[i] for i in range(2)])
    obs = Observation(torch.zeros(2, 3), {k: data[k] for k in op.physics_keys})
    with pytest.raises(ValueError, match="item-major"):
        op.loss(torch.zeros(3, 6, 1, 1), obs)


def test_dataset_items_independent_of_id_list():
    """Item 5 is the same whether loaded alone or among others."""
    a = LinearGMMProblems(grid_gmm(4), dim_y=2, id_list="3-5")[2]
    b = LinearGMMProblems(grid_gmm(4), dim_y=2, id_list=[5])[0]
    for k in a:
        torch.testing.assert_close(a[k], b[k])
