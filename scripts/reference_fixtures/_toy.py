"""The toy linear-Gaussian problem of the algorithm parity fixtures, on the reference's side (runs
inside a reference checkout; imports nothing of this project).

x ~ N(mu, C) in d = 16 unknowns shaped (1, 4, 4); y = A x + sigma * e with A = U diag(S) Vt[:m]
(m = 10). The denoiser is exact: D(x, s) = mu + C (C + s^2 I)^-1 (x - mu). The operator subclasses
the reference's ``BaseOperator`` and offers what its algorithms read: ``forward``, ``loss``,
``gradient``, ``gradient_m``, the SVD pieces ``U``, ``S``, ``Vt``, ``V``, ``Ut``, ``M``, the matrix
``A``, ``pseudo_inverse``. The same arrays build this project's side in ``tests/parity_toy.py``.

``record_draws`` patches torch's global sampling functions to record every draw in order, so the
parity tests can replay them (``utils.rng.ReplayRNG``).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

D, M, SHAPE = 16, 10, (1, 4, 4)


def make_toy(seed: int = 0, sigma_noise: float = 0.1) -> dict[str, np.ndarray]:
    """Seeded problem arrays (float64): prior ``mu``, ``cov``; ``U``, ``S``, ``Vt``; ``x_true``,
    ``noise`` and ``y``."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=D) * 0.3
    L = rng.normal(size=(D, D)) / np.sqrt(D)
    cov = L @ L.T + 0.1 * np.eye(D)
    U = np.linalg.qr(rng.normal(size=(M, M)))[0]
    Vt = np.linalg.qr(rng.normal(size=(D, D)))[0].T
    S = np.sort(rng.uniform(0.3, 2.0, size=M))[::-1].copy()
    x_true = mu + np.linalg.cholesky(cov) @ rng.normal(size=D)
    A = U @ np.diag(S) @ Vt[:M]
    noise = rng.normal(size=M)
    y = A @ x_true + sigma_noise * noise
    return dict(
        mu=mu,
        cov=cov,
        U=U,
        S=S,
        Vt=Vt,
        x_true=x_true,
        noise=noise,
        y=y,
        sigma_noise=np.array(sigma_noise),
    )


class ToyNet(torch.nn.Module):
    """Exact denoiser of N(mu, cov) with the attributes the reference's algorithms read."""

    def __init__(self, mu, cov, sigma_min=0.002, sigma_max=80.0):
        super().__init__()
        self.mu = torch.as_tensor(mu, dtype=torch.float64)
        self.cov = torch.as_tensor(cov, dtype=torch.float64)
        self.img_channels, self.img_resolution = SHAPE[0], SHAPE[-1]
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None):
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        xf = x.reshape(x.shape[0], -1).to(torch.float64)
        eye = torch.eye(D, dtype=torch.float64)
        out = []
        for i in range(xf.shape[0]):
            si = s[i] if s.numel() > 1 else s[0]
            gain = self.cov @ torch.linalg.inv(self.cov + si**2 * eye)
            out.append(self.mu + gain @ (xf[i] - self.mu))
        return torch.stack(out).reshape(x.shape).to(x.dtype)


def toy_operator(arrays: dict, unnorm_scale: float = 1.0):
    """The reference's ``BaseOperator`` subclass for y = U diag(S) Vt[:m] x (imported late: the
    reference must be on sys.path). With ``unnorm_scale`` != 1 the matrix acts on physical units,
    y = A (unnorm_scale * x), as the reference's inverse scattering does (``A`` is the physical
    matrix; the SVD pieces stay A's)."""
    from inverse_problems.base import BaseOperator

    U = torch.as_tensor(arrays["U"])
    S_ = torch.as_tensor(arrays["S"])
    Vt_ = torch.as_tensor(arrays["Vt"])
    A_ = U @ torch.diag(S_) @ Vt_[:M]

    class ToyOperator(BaseOperator):
        def __init__(self):
            super().__init__(float(arrays["sigma_noise"]), 0.0, float(unnorm_scale), device="cpu")
            self.U = U
            self.A = A_
            self._S = torch.cat([S_, torch.zeros(D - M, dtype=torch.float64)])
            self._M = torch.cat([torch.ones(M), torch.zeros(D - M)]).to(torch.float64)

        @property
        def S(self):
            return self._S.reshape(1, *SHAPE)

        @property
        def M(self):
            return self._M.reshape(1, *SHAPE)

        def forward(self, inputs, unnormalize=True, **kwargs):
            x = self.unnormalize(inputs.reshape(inputs.shape[0], -1).to(torch.float64))
            return (x @ A_.T).to(inputs.dtype)

        def Vt(self, x):
            return (x.reshape(x.shape[0], -1).to(torch.float64) @ Vt_.T).reshape(-1, *SHAPE)

        def V(self, z):
            return (z.reshape(z.shape[0], -1).to(torch.float64) @ Vt_).reshape(-1, *SHAPE)

        def Ut(self, y):
            z = y.reshape(y.shape[0], -1).to(torch.float64) @ U
            pad = torch.zeros(z.shape[0], D - M, dtype=torch.float64)
            return torch.cat([z, pad], dim=1).reshape(-1, *SHAPE)

        def pseudo_inverse(self, y):
            return (y.reshape(y.shape[0], -1).to(torch.float64) @ torch.linalg.pinv(A_).T).reshape(
                -1, *SHAPE
            )

    return ToyOperator()


_PATCHED = ("randn", "randn_like", "rand", "rand_like", "randint", "randint_like", "randperm")


@contextlib.contextmanager
def record_draws(seed: int = 0):
    """Seed torch's global RNG and record every draw of the functions in ``_PATCHED`` (in the
    order the code makes them) into the yielded list."""
    torch.manual_seed(seed)
    draws: list[torch.Tensor] = []
    originals = {name: getattr(torch, name) for name in _PATCHED}

    def wrap(fn):
        def recorded(*args, **kwargs):
            out = fn(*args, **kwargs)
            draws.append(out.detach().clone())
            return out

        return recorded

    for name, fn in originals.items():
        setattr(torch, name, wrap(fn))
    try:
        yield draws
    finally:
        for name, fn in originals.items():
            setattr(torch, name, fn)


def draws_as_arrays(prefix: str, draws) -> dict[str, np.ndarray]:
    """``{prefix_draw_000: array, ...}`` for ``save``."""
    return {f"{prefix}_draw_{k:04d}": d.cpu().numpy() for k, d in enumerate(draws)}


def save_scatter_case(args, case: str, meta: dict, out, y, x_true, spectrum, draws) -> None:
    """One image-sized algorithm fixture (inverse scattering at 32²): the reference's output, its
    observation and truth, the prior's spectrum and the recorded draws."""
    from _common import save

    save(
        args.out / f"algo_scatter_{case}.npz",
        args.reference,
        meta,
        x=out.numpy(),
        y_obs=torch.view_as_real(y).numpy(),
        x_true=x_true.numpy(),
        spectrum=spectrum,
        **draws_as_arrays(case, draws),
    )
    print(f"  scatter {case}: {len(draws)} draws, |x| = {float(out.norm()):.4f}", flush=True)


def save_toy_case(args, case: str, meta: dict, out, obs, arrays: dict, draws) -> None:
    """One toy-problem algorithm fixture: the reference's output, the observation, the problem's
    arrays and the recorded draws."""
    from _common import save

    save(
        args.out / f"algo_{case}.npz",
        args.reference,
        meta,
        x=out.numpy(),
        y_obs=obs.numpy(),
        **dict(arrays),
        **draws_as_arrays(case, draws),
    )
    print(f"  {case}: {len(draws)} draws, |x| = {float(out.norm()):.4f}", flush=True)
