"""Distributions with closed-form noised marginals, denoisers and linear-Gaussian posteriors.

Everything is computed in float64 on flattened vectors x of dimension d (rows first). Noising
follows EDM: x_sigma = x_0 + sigma * eps. Formulas: docs/exact-posteriors.md.

* ``GaussianMixture``: weights, means and covariances, either one covariance shared by all
  components ("tied", stored once) or one per component. A Gaussian is a one-component mixture.
* ``StationaryGaussianField``: a zero-mean stationary field on a periodic grid, diagonal in the
  orthonormal 2-D Fourier basis (a Gaussian random field).
"""

from __future__ import annotations

import math
from functools import cached_property

import torch

LOG_2PI = math.log(2 * math.pi)
_F64 = torch.float64


def _as_sigma(sigma, rows: int, device) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=_F64, device=device).reshape(-1)
    if s.numel() == 1:
        s = s.expand(rows)
    if s.numel() != rows:
        raise ValueError(f"sigma has {s.numel()} entries for {rows} rows")
    return s


class GaussianMixture:
    """p(x) = sum_k w_k N(x; mu_k, Sigma_k) in R^d.

    ``covs`` is (d, d) for a covariance shared by every component, or (K, d, d).
    """

    def __init__(self, weights, means, covs, device="cpu"):
        self.weights = torch.as_tensor(weights, dtype=_F64, device=device)
        self.means = torch.as_tensor(means, dtype=_F64, device=device)
        covs = torch.as_tensor(covs, dtype=_F64, device=device)
        if self.means.dim() != 2 or self.weights.shape != self.means.shape[:1]:
            raise ValueError("means must be (K, d) and weights (K,)")
        self.tied = covs.dim() == 2
        covs = covs.unsqueeze(0) if self.tied else covs
        d = self.means.shape[1]
        if covs.shape[-2:] != (d, d) or covs.shape[0] not in (1, self.means.shape[0]):
            raise ValueError(f"covs must be ({d}, {d}) or (K, {d}, {d}), got {tuple(covs.shape)}")
        self.covs = 0.5 * (covs + covs.mT)
        self.weights = self.weights / self.weights.sum()

    # Factorizations are computed on first use (an eigendecomposition for densities and the
    # denoiser, a Cholesky factor for sampling), so building a posterior only to sample from it
    # or read its moments costs no eigendecomposition.
    @cached_property
    def _eig(self):
        evals, evecs = torch.linalg.eigh(self.covs)  # (K', d), (K', d, d)
        means_eig = torch.einsum("kji,kj->ki", self._per_component(evecs), self.means)
        return evals.clamp_min(0.0), evecs, means_eig

    @cached_property
    def _quad_matrix(self) -> torch.Tensor:
        """[-2 mu_e^T; (mu_e^2)^T], (2d, K): the cross terms of the tied quadratic forms."""
        return torch.cat([-2 * self.means_eig.T, self.means_eig.square().T], 0)

    @property
    def evals(self) -> torch.Tensor:
        return self._eig[0]

    @property
    def evecs(self) -> torch.Tensor:
        return self._eig[1]

    @property
    def means_eig(self) -> torch.Tensor:
        """Means in each component's eigenbasis, (K, d)."""
        return self._eig[2]

    @cached_property
    def _sqrt_cov(self) -> torch.Tensor:
        """A factor L with L L^T = Sigma_k, (K', d, d): Cholesky, or eigh for singular Sigma_k."""
        L, info = torch.linalg.cholesky_ex(self.covs)
        if torch.any(info != 0):
            L = self.evecs * self.evals.sqrt().unsqueeze(-2)
        return L

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def _per_component(self, t: torch.Tensor) -> torch.Tensor:
        return t.expand(self.num_components, *t.shape[1:]) if self.tied else t

    def to(self, device) -> GaussianMixture:
        if torch.device(device) == self.means.device:
            return self
        covs = self.covs[0] if self.tied else self.covs
        return GaussianMixture(self.weights, self.means, covs, device=device)

    # -- noised marginal -------------------------------------------------------------------------
    # Tied covariances use only (B, d) and (B, K) tensors: the quadratic forms expand into matmuls
    # against the means in the shared eigenbasis. Untied ones need (B, K, d) coordinates.
    def _log_components(self, x: torch.Tensor, sigma: torch.Tensor):
        """Per-component log N(x; mu_k, Sigma_k + sigma^2 I) (B, K), with the pieces the
        denoiser reuses."""
        var = (self.evals.unsqueeze(0) + sigma.square()[:, None, None]).clamp_min(1e-300)
        const = var.log().sum(-1) + self.dim * LOG_2PI  # (B, K')
        if self.tied:
            var = var[:, 0]  # (B, d)
            xe = x @ self.evecs[0]  # (B, d)
            inv = 1 / var
            # ||xe - mu_k||^2_var = sum xe^2/var - 2 (xe/var).mu_k + (1/var).mu_k^2: one matmul.
            quad = (xe.square() * inv).sum(1, keepdim=True) + torch.cat(
                [xe * inv, inv], 1
            ) @ self._quad_matrix
            return -0.5 * (quad.clamp_min(0) + const), (xe, var)
        z = torch.einsum("bi,kij->bkj", x, self.evecs) - self.means_eig.unsqueeze(0)  # (B, K, d)
        return -0.5 * ((z.square() / var).sum(-1) + const), (z, var)

    def log_prob(self, x, sigma=0.0) -> torch.Tensor:
        """log p_sigma(x) of the noised marginal; x (B, d)."""
        x = torch.as_tensor(x, dtype=_F64, device=self.means.device)
        logn, _ = self._log_components(x, _as_sigma(sigma, x.shape[0], x.device))
        return torch.logsumexp(logn + self.weights.log(), dim=1)

    def responsibilities(self, x, sigma=0.0) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=_F64, device=self.means.device)
        logn, _ = self._log_components(x, _as_sigma(sigma, x.shape[0], x.device))
        return torch.softmax(logn + self.weights.log(), dim=1)

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """E[x_0 | x_0 + sigma eps = x]
        = sum_k r_k(x) (mu_k + Sigma_k (Sigma_k + sigma^2 I)^-1 (x - mu_k))."""
        x = x.to(_F64)
        sigma = _as_sigma(sigma, x.shape[0], x.device)
        logn, (coords, var) = self._log_components(x, sigma)
        r = torch.softmax(logn + self.weights.log(), dim=1)  # (B, K)
        if self.tied:
            # sum_k r_k m_k = V [m + shrink (xe - m)] with m = sum_k r_k V^T mu_k.
            shrink = self.evals[0] / var  # (B, d)
            m = r @ self.means_eig
            return (m + shrink * (coords - m)) @ self.evecs[0].T
        u = r.unsqueeze(-1) * (self.evals.unsqueeze(0) / var) * coords  # (B, K, d)
        return r @ self.means + torch.einsum("kij,bkj->bi", self.evecs, u)

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = _as_sigma(sigma, x.shape[0], x.device)
        return (self.denoise(x, sigma) - x.to(_F64)) / sigma.square()[:, None]

    # -- sampling --------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Exact samples (n, d), drawn on the CPU from ``generator`` and moved to the device."""
        w = self.weights.cpu()
        k = torch.multinomial(w, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=_F64)
        k, eps = k.to(self.means.device), eps.to(self.means.device)
        L = self._sqrt_cov
        noise = eps @ L[0].T if self.tied else torch.einsum("bij,bj->bi", L[k], eps)
        return self.means[k] + noise

    # -- linear-Gaussian posterior ---------------------------------------------------------------
    def posterior(self, A, noise_var, y) -> GaussianMixture:
        """p(x | y) for y = A x + eta, eta ~ N(0, diag(noise_var)); A (m, d), y (m,)."""
        dev = self.means.device
        A = torch.as_tensor(A, dtype=_F64, device=dev)
        y = torch.as_tensor(y, dtype=_F64, device=dev).reshape(-1)
        m = A.shape[0]
        noise_cov = torch.diag(torch.as_tensor(noise_var, dtype=_F64, device=dev).expand(m))
        SAt = self.covs @ A.T  # (K', d, m)
        S = A @ SAt + noise_cov  # (K', m, m)
        S = 0.5 * (S + S.mT)
        L = torch.linalg.cholesky(S)
        gain = torch.cholesky_solve(SAt.mT, L).mT  # Sigma A^T S^-1, (K', d, m)
        resid = y - self.means @ A.T  # (K, m)
        gain_k = self._per_component(gain)
        post_means = self.means + torch.einsum("kdm,km->kd", gain_k, resid)
        post_covs = self.covs - gain @ A @ self.covs
        # Evidence N(y; A mu_k, S_k).
        L_k = self._per_component(L)
        sol = torch.linalg.solve_triangular(L_k, resid.unsqueeze(-1), upper=False).squeeze(-1)
        logdet = 2 * torch.diagonal(L_k, dim1=-2, dim2=-1).log().sum(-1)
        log_ev = -0.5 * (sol.square().sum(-1) + logdet + m * LOG_2PI)
        post_w = torch.softmax(self.weights.log() + log_ev, dim=0)
        return GaussianMixture(post_w, post_means, post_covs[0] if self.tied else post_covs, dev)

    def mean(self) -> torch.Tensor:
        return self.weights @ self.means


def gaussian(mean, cov, device="cpu") -> GaussianMixture:
    """N(mean, cov) as a one-component mixture (dense covariance)."""
    mean = torch.as_tensor(mean, dtype=_F64)
    return GaussianMixture(torch.ones(1), mean.reshape(1, -1), cov, device=device)


def grid_gmm(
    dim: int = 8, weights: str = "random", spacing: float = 8.0, seed: int = 0, device="cpu"
) -> GaussianMixture:
    """The canonical 25-component test mixture (MCGDiff / TMPD; exact-posterior.md §3.1).

    Means on the 5x5 grid (-spacing*i, -spacing*j), i, j in {-2..2}, the 2-D pattern repeated d/2
    times; identity covariances. ``weights='random'``: w ∝ z^2, z ~ N(0, 1) drawn from ``seed``
    (MCGDiff); ``'equal'``: uniform (TMPD).
    """
    if dim % 2:
        raise ValueError(f"grid_gmm needs an even dimension, got {dim}")
    grid = torch.tensor(
        [(-spacing * i, -spacing * j) for i in range(-2, 3) for j in range(-2, 3)], dtype=_F64
    )
    means = grid.repeat(1, dim // 2)
    if weights == "random":
        g = torch.Generator().manual_seed(int(seed))
        w = torch.randn(25, generator=g, dtype=_F64).square()
    elif weights == "equal":
        w = torch.ones(25, dtype=_F64)
    else:
        raise ValueError(f"weights must be 'random' or 'equal', got {weights!r}")
    return GaussianMixture(w, means, torch.eye(dim, dtype=_F64), device=device)


class StationaryGaussianField:
    """Zero-mean Gaussian field on a periodic H x W grid, C = F^H diag(spectrum) F.

    ``spectrum`` (H, W) is the covariance's eigenvalue per orthonormal 2-D DFT mode (real,
    non-negative, symmetric under k -> -k so that samples are real).
    """

    def __init__(self, spectrum, device="cpu"):
        self.spectrum = torch.as_tensor(spectrum, dtype=_F64, device=device)
        self.shape = (1, *self.spectrum.shape)

    @property
    def dim(self) -> int:
        return self.spectrum.numel()

    def to(self, device) -> StationaryGaussianField:
        if torch.device(device) == self.spectrum.device:
            return self
        return StationaryGaussianField(self.spectrum, device=device)

    def _apply(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """F^H diag(gain) F x for rows x (B, d); gain (B or 1, H, W)."""
        img = x.reshape(-1, *self.spectrum.shape)
        out = torch.fft.ifft2(gain * torch.fft.fft2(img, norm="ortho"), norm="ortho").real
        return out.reshape(x.shape[0], -1)

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        x = x.to(_F64)
        s2 = _as_sigma(sigma, x.shape[0], x.device).square()[:, None, None]
        lam = self.spectrum.unsqueeze(0)
        return self._apply(x, lam / (lam + s2).clamp_min(1e-300))

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = _as_sigma(sigma, x.shape[0], x.device)
        return (self.denoise(x, sigma) - x.to(_F64)) / sigma.square()[:, None]

    def log_prob(self, x, sigma=0.0) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=_F64, device=self.spectrum.device)
        s2 = _as_sigma(sigma, x.shape[0], x.device).square()[:, None, None]
        var = self.spectrum.unsqueeze(0) + s2
        xf = torch.fft.fft2(x.reshape(-1, *self.spectrum.shape), norm="ortho")
        quad = (xf.abs().square() / var).flatten(1).sum(1)
        return -0.5 * (quad + var.log().flatten(1).sum(1) + self.dim * LOG_2PI)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        w = torch.randn(n, self.dim, generator=generator, dtype=_F64).to(self.spectrum.device)
        return self._apply(w, self.spectrum.sqrt().unsqueeze(0))

    def covariance(self) -> torch.Tensor:
        """Dense (d, d) covariance: C[i, j] = c(i - j), c = F^H spectrum (circulant)."""
        H, W = self.spectrum.shape
        c = torch.fft.ifft2(self.spectrum, norm="backward").real  # autocovariance c(dh, dw)
        ii, jj = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        ii, jj = ii.reshape(-1), jj.reshape(-1)
        dh = (ii[:, None] - ii[None, :]) % H
        dw = (jj[:, None] - jj[None, :]) % W
        return c[dh.to(c.device), dw.to(c.device)]

    def to_mixture(self) -> GaussianMixture:
        return gaussian(
            torch.zeros(self.dim, dtype=_F64), self.covariance(), device=self.spectrum.device
        )

    def mean(self) -> torch.Tensor:
        return torch.zeros(self.dim, dtype=_F64, device=self.spectrum.device)


def matern_field(
    size: int = 32, alpha: float = 2.5, tau: float = 3.0, variance: float = 1.0, device="cpu"
) -> StationaryGaussianField:
    """GRF on the periodic [0, 2pi)^2 torus with spectrum ∝ (|k|^2 + tau^2)^(-alpha).

    The covariance of the FNO / PINO papers' initial conditions, N(0, (-Δ + tau^2 I)^(-alpha)),
    rescaled so that every pixel has the given marginal ``variance``.
    """
    k = torch.fft.fftfreq(size, d=1.0 / size, dtype=_F64)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    spec = (k2 + tau**2) ** (-alpha)
    spec = spec * (variance * size * size / spec.sum())  # pointwise variance = sum(spec) / d
    return StationaryGaussianField(spec, device=device)
