"""Test sets of seeded random problem instances for the exact-posterior problems.

Item ``id`` is drawn from its own generator, seeded by (seed, id): an item does not depend on which
other items are loaded. Items are dicts: ``target`` (the ground truth, drawn from the prior) plus
the per-item physics that the operator reads.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from utils.helper import select_ids
from utils.rng import DATA, derive_seed


class _Instances(Dataset):
    def __init__(self, num_items: int, seed: int, id_list):
        self.seed = int(seed)
        self.id_list = select_ids(
            id_list, int(num_items), f"{type(self).__name__}(num_items={num_items})"
        )

    def __len__(self) -> int:
        return len(self.id_list)

    def generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.seed, self.id_list[index], DATA))


class LinearGMMProblems(_Instances):
    """y = A x + eta, x ~ GMM prior, A = U diag(s) V[:dim_y] (MCGDiff / TMPD test).

    U, V: singular vectors of a standard Gaussian (dim_y, d) matrix; s: sorted U(0, 1) values.
    ``sigma_noise='random'`` draws sigma_y = u * max(s), u ~ U(0, 1) per item (MCGDiff); a number
    fixes it (TMPD uses 1.0).
    """

    def __init__(
        self,
        distribution,
        dim_y: int = 4,
        sigma_noise="random",
        num_items: int = 20,
        seed: int = 0,
        id_list=None,
        shape=None,
    ):
        super().__init__(num_items, seed, id_list)
        self.distribution = distribution
        d = distribution.dim
        if not 1 <= dim_y <= d:
            raise ValueError(f"dim_y must be in [1, {d}], got {dim_y}")
        self.dim_y = int(dim_y)
        self.sigma_noise = sigma_noise
        self.shape = tuple(shape) if shape is not None else (d, 1, 1)

    def __getitem__(self, index: int) -> dict:
        g = self.generator(index)
        d, m = self.distribution.dim, self.dim_y
        x = self.distribution.sample(1, g)[0].cpu()
        U, _, Vt = torch.linalg.svd(torch.randn(m, d, generator=g, dtype=torch.float64))
        s = torch.rand(m, generator=g, dtype=torch.float64).sort(descending=True).values
        if self.sigma_noise == "random":
            sigma = torch.rand((), generator=g, dtype=torch.float64) * s.max()
        else:
            sigma = torch.tensor(float(self.sigma_noise), dtype=torch.float64)
        return {
            "target": x.reshape(self.shape).float(),
            "U": U,
            "S": s,
            "Vt": Vt,
            "sigma_noise": sigma,
        }


class PixelGRFProblems(_Instances):
    """x ~ stationary Gaussian field, observed at ``num_obs`` random pixels (TMPD ``grf.py``)."""

    def __init__(
        self, distribution, num_obs: int = 64, num_items: int = 10, seed: int = 0, id_list=None
    ):
        super().__init__(num_items, seed, id_list)
        self.distribution = distribution
        if not 1 <= num_obs <= distribution.dim:
            raise ValueError(f"num_obs must be in [1, {distribution.dim}], got {num_obs}")
        self.num_obs = int(num_obs)

    def __getitem__(self, index: int) -> dict:
        g = self.generator(index)
        x = self.distribution.sample(1, g)[0].cpu()
        idx = torch.randperm(self.distribution.dim, generator=g)[: self.num_obs].sort().values
        return {"target": x.reshape(self.distribution.shape).float(), "indices": idx}


class PriorDraws(_Instances):
    """Ground truths drawn from a closed-form prior, one seeded generator per item id."""

    def __init__(self, distribution, num_items: int = 10, seed: int = 0, id_list=None, shape=None):
        super().__init__(num_items, seed, id_list)
        self.distribution = distribution
        default = getattr(distribution, "shape", (distribution.dim, 1, 1))
        self.shape = tuple(shape) if shape is not None else tuple(default)

    def __getitem__(self, index: int) -> dict:
        x = self.distribution.sample(1, self.generator(index))[0].cpu()
        return {"target": x.reshape(self.shape).float()}
