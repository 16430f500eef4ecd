"""Metric kernels shared by evaluators and tests."""

from __future__ import annotations

import torch


def random_directions(num: int, dim: int, seed: int = 0) -> torch.Tensor:
    """``num`` unit vectors in R^dim, fixed by ``seed`` (float64, CPU)."""
    g = torch.Generator().manual_seed(int(seed))
    v = torch.randn(num, dim, generator=g, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


def wasserstein_1d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """W1 between the empirical distributions of the columns of a (n, L) and b (m, L).

    W1 = int_0^1 |F_a^-1(u) - F_b^-1(u)| du, exact for empirical measures of different sizes:
    both quantile functions are constant between the merged levels {i/n} U {j/m}.
    """
    n, m = a.shape[0], b.shape[0]
    # Sorting contiguous rows is ~10x faster than sorting along a strided dim 0.
    a = a.T.contiguous().sort(dim=1).values.T
    b = b.T.contiguous().sort(dim=1).values.T
    levels = torch.cat(
        [
            torch.arange(1, n + 1, dtype=torch.float64) / n,
            torch.arange(1, m + 1, dtype=torch.float64) / m,
        ]
    ).unique()
    widths = torch.diff(levels, prepend=levels.new_zeros(1))
    mid = levels - widths / 2
    ia = (mid * n).floor().long().clamp_max(n - 1).to(a.device)
    ib = (mid * m).floor().long().clamp_max(m - 1).to(b.device)
    return ((a[ia] - b[ib]).abs() * widths.to(a.device)[:, None]).sum(0)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: torch.Tensor) -> float:
    """Mean over ``directions`` (L, d) of W1 between projected samples a (n, d) and b (m, d)."""
    dirs = directions.to(device=a.device, dtype=torch.float64)
    return float(wasserstein_1d(a.double() @ dirs.T, b.double() @ dirs.T).mean())
