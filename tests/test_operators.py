"""Shared operator properties over every operator of the registry (tests/registry.py), each
applied where the operator declares the capability (``BaseOperator.capabilities``)."""

from __future__ import annotations

import pytest
import torch

from inverse_problems.base import Observation
from tests.registry import OPERATORS, REQUIRES, OperatorCase
from training.exact import LinearGMMProblems
from utils.distributions import grid_gmm
from utils.rng import BatchRNG

N = 2  # probe rows per item


@pytest.fixture(scope="module", params=sorted(OPERATORS))
def case(request, tmp_path_factory):
    if request.param in REQUIRES:
        pytest.importorskip(REQUIRES[request.param])
    c = OPERATORS[request.param](tmp_path_factory.mktemp(request.param))
    obs = c.op(c.data, BatchRNG.for_items(0, range(c.batch), 0))
    yield c, obs
    c.op.close()


def needs(c: OperatorCase, capability: str) -> None:
    if capability not in c.op.capabilities:
        pytest.skip(f"{type(c.op).__name__} declares no {capability!r}")


def probe_rows(c: OperatorCase, seed: int) -> torch.Tensor:
    """N rows per item, item-major: the item's target plus a random perturbation (float64
    unless the case says otherwise: the Taylor test needs the precision)."""
    g = torch.Generator().manual_seed(seed)
    x = c.data["target"].repeat_interleave(N, 0).to(c.dtype)
    noise = c.direction(x, g) if c.direction else torch.randn(x.shape, generator=g, dtype=x.dtype)
    return x + c.perturb * noise


def lin(op, x, physics):
    """The linear part of forward (InverseScatter's forward is affine)."""
    return op.forward(x, **physics) - op.forward(torch.zeros_like(x), **physics)


def per_row(values: torch.Tensor, batch: int) -> torch.Tensor:
    """Per-item values (B, k) or shared ones (1, k) expanded to the N rows per item."""
    return values.expand(batch, -1).repeat_interleave(N, 0)


def test_rows_use_their_items_physics(case):
    """Measurements and misfits (and gradients) of B items in one call equal each item alone."""
    c, obs = case
    x = probe_rows(c, 1)
    y, loss = c.op.forward(x, **obs.physics), c.op.loss(x, obs)
    grad = c.op.gradient(x, obs) if "gradient" in c.op.capabilities else None
    tol = dict(rtol=c.batch_rtol, atol=c.batch_rtol * 1e-6)
    for i in range(c.batch):
        rows, one = slice(N * i, N * i + N), obs.item(i)
        torch.testing.assert_close(c.op.forward(x[rows], **one.physics), y[rows], **tol)
        torch.testing.assert_close(c.op.loss(x[rows], one), loss[rows], **tol)
        if grad is not None:
            torch.testing.assert_close(c.op.gradient(x[rows], one), grad[rows], **tol)


def test_gradient_taylor(case):
    """Taylor test: loss(x + h v) - loss(x) - h <grad, v> = O(h^2) (halving h quarters it)."""
    c, obs = case
    needs(c, "gradient")
    x = probe_rows(c, 2)
    g = torch.Generator().manual_seed(3)
    v = c.direction(x, g) if c.direction else torch.randn(x.shape, generator=g, dtype=x.dtype)
    grad, loss = c.op.gradient(x, obs, return_loss=True)
    torch.testing.assert_close(loss, c.op.loss(x, obs), check_dtype=False)
    errs = []
    for h in c.taylor_h:
        linear = loss + h * (grad * v).flatten(1).sum(1)
        errs.append((c.op.loss(x + h * v, obs) - linear).abs())
    ratio = errs[0] / errs[1].clamp_min(1e-300)
    # a quadratic misfit gives 4; measured 3.97-4.11 for FWI, black hole and Navier-Stokes
    assert torch.all((ratio > 3.5) | (errs[0] < 1e-12 * loss.abs().clamp_min(1))), ratio


def test_adjoint(case):
    """<L x, y> = <x, A^T y> per row, with each item's own physics (L: forward's linear part)."""
    c, obs = case
    needs(c, "adjoint")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(c.data["target"].repeat_interleave(N, 0).shape, generator=g, dtype=F64)
    ax = lin(c.op, x, obs.physics)
    y = torch.randn(ax.shape, generator=g, dtype=F64)
    aty = c.op.adjoint(y, **obs.physics).reshape(x.shape)
    lhs, rhs = (ax * y).flatten(1).sum(1), (x * aty).flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)  # measured <= 1e-14 relative


def test_svd_pieces_and_pseudo_inverse(case):
    """On the kept row space x = V z (z zero past the k singular values): Vt inverts V,
    U diag(S) z is forward's linear part, Ut undoes U, and the pseudo-inverse recovers x."""
    c, obs = case
    needs(c, "svd")
    phys = obs.physics
    s = per_row(c.op.singular_values(**phys), c.batch)
    k = s.shape[1]
    d = c.data["target"][0].numel()
    g = torch.Generator().manual_seed(5)
    z = torch.randn(c.batch * N, d, generator=g, dtype=F64)
    z[:, k:] = 0
    x = c.op.V(z, **phys).reshape(c.batch * N, *c.data["target"].shape[1:])
    tol = dict(rtol=1e-8, atol=1e-10)  # measured <= 1e-13 in float64
    torch.testing.assert_close(c.op.Vt(x, **phys).reshape(z.shape), z, **tol)
    ax = lin(c.op, x, phys)
    torch.testing.assert_close(c.op.U(z[:, :k] * s, **phys).reshape(ax.shape), ax, **tol)
    torch.testing.assert_close(c.op.Ut(ax, **phys).reshape(z[:, :k].shape), z[:, :k] * s, **tol)
    if "pseudo_inverse" in c.op.capabilities:
        xp = c.op.pseudo_inverse(ax, **phys).reshape(x.shape)
        # S^-2 amplifies round-off by the condition number: measured 6e-9 (inverse scattering)
        torch.testing.assert_close(xp, x, rtol=1e-6, atol=1e-7)


def test_pseudo_inverse_solves_on_the_range(case):
    """A A^+ y = y for y in the range of A (any x, not only the kept row space, when nothing is
    truncated; the operators with truncation are covered above)."""
    c, obs = case
    needs(c, "pseudo_inverse")
    if "svd" in c.op.capabilities:
        s = c.op.singular_values(**obs.physics)
        if s.shape[1] < min(
            c.data["target"][0].numel(), lin(c.op, probe_rows(c, 0), obs.physics)[0].numel()
        ):
            pytest.skip("truncated spectrum: checked on the kept row space")
    x = probe_rows(c, 6).to(F64)
    y = lin(c.op, x, obs.physics)
    xp = c.op.pseudo_inverse(y, **obs.physics).reshape(x.shape)
    torch.testing.assert_close(lin(c.op, xp, obs.physics), y)


def test_noise_statistics_and_seeding(case):
    """An item's observation ignores its batch-mates (one stream per item); additive noise has
    the declared std."""
    c, obs = case
    for i in range(c.batch):
        one = {k: v[i : i + 1] for k, v in c.data.items()}
        alone = c.op(one, BatchRNG.for_items(0, [i], 0))
        torch.testing.assert_close(alone.y, obs.y[i : i + 1])
    again = c.op(c.data, BatchRNG.for_items(0, range(c.batch), 0))
    torch.testing.assert_close(again.y, obs.y, rtol=0, atol=0)
    if not c.additive_noise:
        return
    std = c.op.noise_std(obs.physics, obs.batch)
    clean = c.op.forward(c.data["target"], **obs.physics)
    resid = (obs.y - clean).double() / std.clamp_min(1e-300).reshape(-1, *[1] * (clean.dim() - 1))
    if torch.all(std > 0):
        assert resid.abs().max() < 6
        nonzero = resid[resid != 0]  # MRI: noise only on acquired lines
        assert abs(float(nonzero.std()) - 1) < 0.3, float(nonzero.std())


def test_float64_input_keeps_working(case):
    """float64 rows give finite measurements that agree with float32 rows."""
    c, obs = case
    x = probe_rows(c, 7)
    y64 = c.op.forward(x.double(), **obs.physics)
    y32 = c.op.forward(x.float(), **obs.physics)
    assert y64.dtype.is_floating_point and torch.isfinite(y64).all()
    scale = y64.double().abs().max()
    assert float((y64.double() - y32.double()).abs().max()) <= 1e-3 * float(scale)
    assert torch.isfinite(c.op.loss(x.double(), obs)).all()


def test_no_state_between_calls(case):
    """Calls in either order give the same numbers: nothing carries over between calls."""
    c, obs = case
    a, b = probe_rows(c, 8), probe_rows(c, 9)
    first = c.op.loss(a, obs), c.op.forward(a, **obs.physics)
    c.op.loss(b, obs)
    if "gradient" in c.op.capabilities:
        c.op.gradient(b, obs)
    second = c.op.loss(a, obs), c.op.forward(a, **obs.physics)
    for u, v in zip(first, second, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


F64 = torch.float64


def test_row_grouping_error():
    """Rows that do not split evenly over the items fail with a message saying why."""
    from inverse_problems.linear import SVDLinear
    from utils.results import collate

    op = SVDLinear()
    ds = LinearGMMProblems(grid_gmm(6), dim_y=3, num_items=2, seed=1)
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
