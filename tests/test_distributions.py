"""Tests for utils/distributions.py (closed-form priors) and models/analytic.py (exact denoiser).

Closed forms are checked against independent numpy/scipy implementations (exact-posterior.md
§3.3); Monte Carlo checks use tolerances of a few standard errors, the standard error of a
self-normalised importance-sampling estimate sum_i w_i f_i being sqrt(sum_i w_i^2 (f_i - est)^2).
"""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax
from scipy.stats import chi2, multivariate_normal

from models.analytic import AnalyticPrior
from utils.distributions import (
    GaussianMixture,
    StationaryGaussianField,
    gaussian,
    grid_gmm,
    matern_field,
)

F64 = torch.float64
D, K = 3, 4


def _random_spd(rng, d, n=None):
    shape = (d, d) if n is None else (n, d, d)
    a = rng.normal(size=shape)
    return a @ np.swapaxes(a, -1, -2) / d + 0.2 * np.eye(d)


def _mixture_params(tied, seed=0):
    """Weights (K,), means (K, d) and covs ((d, d) if tied else (K, d, d)) as numpy arrays."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(2.0 * np.ones(K))
    means = rng.normal(0.0, 2.0, size=(K, D))
    covs = _random_spd(rng, D) if tied else _random_spd(rng, D, K)
    return weights, means, covs


def _per_component_covs(covs):
    return np.broadcast_to(covs, (K, D, D)) if covs.ndim == 2 else covs


def _noised_points(weights, means, covs, sigma, n, seed):
    """n draws of x0 + sigma * eps, x0 from the mixture (numpy, independent of the library)."""
    rng = np.random.default_rng(seed)
    covs = _per_component_covs(covs)
    k = rng.choice(len(weights), size=n, p=weights)
    chol = np.linalg.cholesky(covs)
    x0 = means[k] + np.einsum("nij,nj->ni", chol[k], rng.normal(size=(n, means.shape[1])))
    return x0 + sigma * rng.normal(size=x0.shape)


def _ref_log_components(x, sigma, weights, means, covs):
    """log w_k + log N(x; mu_k, Sigma_k + sigma^2 I) with scipy, (n, K)."""
    covs = _per_component_covs(covs)
    eye = np.eye(means.shape[1])
    return np.stack(
        [
            math.log(w) + multivariate_normal(mu, c + sigma**2 * eye).logpdf(x)
            for w, mu, c in zip(weights, means, covs)
        ],
        axis=-1,
    ).reshape(len(x), -1)


def _ref_denoise(x, sigma, weights, means, covs):
    """sum_k r_k(x) (mu_k + Sigma_k (Sigma_k + sigma^2 I)^-1 (x - mu_k)) with explicit inverses."""
    r = softmax(_ref_log_components(x, sigma, weights, means, covs), axis=1)
    eye = np.eye(means.shape[1])
    out = np.zeros_like(x)
    for k, c in enumerate(_per_component_covs(covs)):
        gain = c @ np.linalg.inv(c + sigma**2 * eye)
        out += r[:, k : k + 1] * (means[k] + (x - means[k]) @ gain.T)
    return out


# -- GaussianMixture: closed forms ---------------------------------------------------------------
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("sigma", [0.05, 0.5, 2.0, 20.0])
def test_gmm_denoise_matches_closed_form(tied, sigma):
    """GaussianMixture.denoise equals an independent numpy/scipy Tweedie denoiser."""
    w, mu, covs = _mixture_params(tied)
    x = _noised_points(w, mu, covs, sigma, 64, seed=1)
    got = GaussianMixture(w, mu, covs).denoise(torch.from_numpy(x), sigma).numpy()
    np.testing.assert_allclose(got, _ref_denoise(x, sigma, w, mu, covs), rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("sigma", [0.0, 0.05, 1.0, 20.0])
def test_gmm_log_prob_matches_scipy(tied, sigma):
    """GaussianMixture.log_prob equals the scipy log-density of the noised mixture."""
    w, mu, covs = _mixture_params(tied)
    x = _noised_points(w, mu, covs, sigma, 64, seed=2)
    got = GaussianMixture(w, mu, covs).log_prob(torch.from_numpy(x), sigma).numpy()
    ref = logsumexp(_ref_log_components(x, sigma, w, mu, covs), axis=1)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_gmm_responsibilities_match_scipy(tied):
    """GaussianMixture.responsibilities equals scipy-based posterior component probabilities."""
    w, mu, covs = _mixture_params(tied)
    x = _noised_points(w, mu, covs, 0.7, 64, seed=3)
    got = GaussianMixture(w, mu, covs).responsibilities(torch.from_numpy(x), 0.7).numpy()
    ref = softmax(_ref_log_components(x, 0.7, w, mu, covs), axis=1)
    np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-12)


def test_gmm_denoise_per_row_sigma():
    """A per-row sigma gives, row by row, the result of the scalar-sigma call."""
    w, mu, covs = _mixture_params(False)
    gmm = GaussianMixture(w, mu, covs)
    sigmas = np.array([0.05, 0.5, 2.0, 20.0])
    x = torch.from_numpy(_noised_points(w, mu, covs, 1.0, 4, seed=4))
    got = gmm.denoise(x, torch.from_numpy(sigmas))
    for i, s in enumerate(sigmas):
        torch.testing.assert_close(got[i : i + 1], gmm.denoise(x[i : i + 1], float(s)))


def test_gmm_denoise_matches_monte_carlo_posterior_mean():
    """denoise(x) equals a self-normalised Monte Carlo estimate of E[x0 | x0 + sigma eps = x]."""
    w, mu, covs = _mixture_params(False)
    gmm = GaussianMixture(w, mu, covs)
    sigma = 1.0
    x0 = gmm.sample(400_000, torch.Generator().manual_seed(5)).numpy()
    x = _noised_points(w, mu, covs, sigma, 3, seed=6)
    den = gmm.denoise(torch.from_numpy(x), sigma).numpy()
    for i in range(len(x)):
        lw = -0.5 * ((x0 - x[i]) ** 2).sum(1) / sigma**2
        wt = softmax(lw)
        est = wt @ x0
        se = np.sqrt((wt[:, None] ** 2 * (x0 - est) ** 2).sum(0))
        assert 1 / (wt**2).sum() > 1000  # effective sample size: the delta-method SE is valid
        np.testing.assert_array_less(np.abs(den[i] - est), 4.5 * se)


# -- score = grad log p --------------------------------------------------------------------------
def _fd_grad(log_prob, x, h=1e-5):
    """Central finite-difference gradient of a batched log-density at the single point x (d,)."""
    d = x.shape[0]
    steps = h * torch.eye(d, dtype=F64)
    lp = log_prob(torch.cat([x + steps, x - steps]))
    return (lp[:d] - lp[d:]) / (2 * h)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("sigma", [0.3, 1.0, 3.0])
def test_gmm_score_is_gradient_of_log_prob(tied, sigma):
    """GaussianMixture.score equals central finite differences of log_prob."""
    w, mu, covs = _mixture_params(tied)
    gmm = GaussianMixture(w, mu, covs)
    x = torch.from_numpy(_noised_points(w, mu, covs, sigma, 5, seed=7))
    score = gmm.score(x, sigma)
    for i in range(len(x)):
        fd = _fd_grad(lambda z, s=sigma: gmm.log_prob(z, s), x[i])
        torch.testing.assert_close(score[i], fd, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sigma", [0.1, 1.0])
def test_field_score_is_gradient_of_log_prob(sigma):
    """StationaryGaussianField.score equals central finite differences of log_prob."""
    field = matern_field(size=8)
    x = field.sample(3, torch.Generator().manual_seed(8))
    x = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=F64)
    score = field.score(x, sigma)
    for i in range(len(x)):
        fd = _fd_grad(lambda z, s=sigma: field.log_prob(z, s), x[i])
        torch.testing.assert_close(score[i], fd, rtol=1e-6, atol=1e-6)


# -- StationaryGaussianField ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def field():
    return matern_field(size=8, variance=2.5)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 5.0])
def test_field_denoise_matches_dense_gaussian(field, sigma):
    """The Fourier-diagonal denoiser equals the dense Gaussian denoiser of to_mixture()."""
    g = torch.Generator().manual_seed(10)
    x = field.sample(6, g) + sigma * torch.randn(6, field.dim, generator=g, dtype=F64)
    torch.testing.assert_close(
        field.denoise(x, sigma), field.to_mixture().denoise(x, sigma), rtol=1e-8, atol=1e-10
    )


@pytest.mark.parametrize("sigma", [0.0, 0.1, 1.0])
def test_field_log_prob_matches_dense_gaussian(field, sigma):
    """StationaryGaussianField.log_prob equals to_mixture().log_prob."""
    g = torch.Generator().manual_seed(11)
    x = field.sample(6, g) + sigma * torch.randn(6, field.dim, generator=g, dtype=F64)
    torch.testing.assert_close(
        field.log_prob(x, sigma), field.to_mixture().log_prob(x, sigma), rtol=1e-9, atol=1e-8
    )


def test_field_covariance_symmetric_with_variance_diagonal(field):
    """covariance() is symmetric, has the pixel variance on its diagonal, eigenvalues = spectrum."""
    cov = field.covariance()
    assert cov.shape == (field.dim, field.dim)
    torch.testing.assert_close(cov, cov.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.diagonal(cov), torch.full((field.dim,), 2.5, dtype=F64))
    evals = torch.linalg.eigvalsh(cov)
    torch.testing.assert_close(evals, field.spectrum.flatten().sort().values, rtol=1e-8, atol=1e-10)


def test_field_covariance_is_stationary(field):
    """C[i, j] depends only on the periodic offset between pixels i and j."""
    cov = field.covariance().reshape(8, 8, 8, 8)
    # Shifting both pixels by the same periodic offset leaves the covariance unchanged.
    shifted = torch.roll(cov, shifts=(3, 5, 3, 5), dims=(0, 1, 2, 3))
    torch.testing.assert_close(shifted, cov, rtol=0, atol=1e-12)


def test_field_sample_covariance_matches(field):
    """The empirical covariance of 20000 samples matches covariance() within 5.5 SE per entry."""
    n = 20_000
    x = field.sample(n, torch.Generator().manual_seed(12))
    cov = field.covariance()
    emp = x.T @ x / n  # the mean is known to be zero
    # Var(x_i x_j) = C_ii C_jj + C_ij^2 for a zero-mean Gaussian; union bound over 2080 entries.
    se = torch.sqrt((torch.outer(cov.diagonal(), cov.diagonal()) + cov.square()) / n)
    assert ((emp - cov).abs() / se).max() < 5.5
    assert (x.mean(0).abs() / (cov.diagonal() / n).sqrt()).max() < 5.0


# -- GaussianMixture.sample ----------------------------------------------------------------------
def test_gmm_sample_moments():
    """Sample mean and covariance of an untied mixture match its exact moments (5 SE)."""
    w, mu, covs = _mixture_params(False)
    n = 200_000
    x = GaussianMixture(w, mu, covs).sample(n, torch.Generator().manual_seed(13)).numpy()
    mean = w @ mu
    cov = np.einsum("k,kij->ij", w, covs + np.einsum("ki,kj->kij", mu, mu)) - np.outer(mean, mean)
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * np.sqrt(np.diag(cov) / n))
    xc = x - mean
    prods = xc[:, :, None] * xc[:, None, :]
    se = prods.std(0) / math.sqrt(n)
    np.testing.assert_array_less(np.abs(prods.mean(0) - cov), 5 * se)


def test_gmm_sample_component_frequencies():
    """Component frequencies of grid_gmm samples match the weights (chi-square, p > 1e-6)."""
    gmm = grid_gmm(dim=4, weights="random", seed=0)
    n = 40_000
    assert n * gmm.weights.min() >= 5  # the chi-square approximation needs >= 5 expected
    x = gmm.sample(n, torch.Generator().manual_seed(14))
    # Means are >= 8 sqrt(2) apart in 4-D with unit covariances: the nearest mean is the
    # component a sample came from except with probability ~1e-8.
    labels = torch.cdist(x, gmm.means).argmin(1)
    counts = torch.bincount(labels, minlength=25).double()
    expected = n * gmm.weights
    stat = float(((counts - expected).square() / expected).sum())
    assert stat < chi2.ppf(1 - 1e-6, df=24)


def test_gmm_sample_shape_and_reproducibility():
    """sample(n, g) has shape (n, d), float64, and repeats for the same generator seed."""
    gmm = GaussianMixture(*_mixture_params(True))
    a = gmm.sample(7, torch.Generator().manual_seed(15))
    b = gmm.sample(7, torch.Generator().manual_seed(15))
    assert a.shape == (7, D) and a.dtype == F64
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# -- linear-Gaussian posterior -------------------------------------------------------------------
def _three_component_prior():
    rng = np.random.default_rng(16)
    w = np.array([0.5, 0.3, 0.2])
    mu = np.array([[-3.0, 0.0], [3.0, 1.0], [0.0, 4.0]])
    return w, mu, _random_spd(rng, 2, 3)


def _grid_prior():
    gmm = grid_gmm(dim=2, weights="random", seed=3)
    return gmm.weights.numpy(), gmm.means.numpy(), np.eye(2)


@pytest.mark.parametrize(
    "prior, A, noise_var, y",
    [
        (_three_component_prior, [[1.0, 0.5]], 0.5, 0.8),
        (_grid_prior, [[0.6, 0.8]], 1.0, 3.0),
    ],
    ids=["3-components", "grid-25"],
)
def test_posterior_matches_importance_sampling(prior, A, noise_var, y):
    """Posterior mean and component weights match importance sampling from the prior (5 SE)."""
    w, mu, covs = prior()
    A = np.array(A)
    post = GaussianMixture(w, mu, covs).posterior(A, noise_var, [y])
    n = 400_000
    rng = np.random.default_rng(17)
    k = rng.choice(len(w), size=n, p=w)
    chol = np.linalg.cholesky(np.broadcast_to(covs, (len(w), 2, 2)))
    x = mu[k] + np.einsum("nij,nj->ni", chol[k], rng.normal(size=(n, 2)))
    wt = softmax(-0.5 * (y - x @ A[0]) ** 2 / noise_var)
    assert 1 / (wt**2).sum() > 5000  # effective sample size
    est_mean = wt @ x
    se_mean = np.sqrt((wt[:, None] ** 2 * (x - est_mean) ** 2).sum(0))
    exact_mean = (post.weights @ post.means).numpy()
    np.testing.assert_array_less(np.abs(exact_mean - est_mean), 5 * se_mean)
    onehot = np.eye(len(w))[k]
    est_mass = wt @ onehot
    se_mass = np.sqrt((wt[:, None] ** 2 * (onehot - est_mass) ** 2).sum(0))
    # 1e-6: masses that small are below what 4e5 draws resolve (the delta-method SE breaks down).
    np.testing.assert_array_less(np.abs(post.weights.numpy() - est_mass), 5 * se_mass + 1e-6)
    assert post.weights.max() < 0.95  # the case really tests the mixing weights


@pytest.mark.parametrize("noise_var", [0.3, [0.2, 1.5]], ids=["scalar", "diagonal"])
def test_posterior_single_gaussian_information_form(noise_var):
    """For one Gaussian, P = (Sigma^-1 + A^T N^-1 A)^-1 and mean = P (Sigma^-1 mu + A^T N^-1 y)."""
    rng = np.random.default_rng(18)
    d, m = 4, 2
    mean, cov = rng.normal(size=d), _random_spd(rng, d)
    A, y = rng.normal(size=(m, d)), rng.normal(size=m)
    n_inv = np.diag(1 / np.broadcast_to(np.asarray(noise_var, dtype=float), (m,)))
    post = gaussian(mean, cov).posterior(A, torch.tensor(noise_var, dtype=F64), y)
    prec = np.linalg.inv(cov) + A.T @ n_inv @ A
    P = np.linalg.inv(prec)
    np.testing.assert_allclose(post.covs[0].numpy(), P, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        post.means[0].numpy(), P @ (np.linalg.solve(cov, mean) + A.T @ n_inv @ y), rtol=1e-9
    )
    np.testing.assert_allclose(post.weights.numpy(), [1.0])


def test_posterior_weights_match_evidence_formula():
    """Posterior weights are prop. to w_k N(y; A mu_k, A Sigma_k A^T + noise) (scipy)."""
    w, mu, covs = _mixture_params(False)
    rng = np.random.default_rng(19)
    A, y, nv = rng.normal(size=(2, D)), rng.normal(size=2), 0.4
    post = GaussianMixture(w, mu, covs).posterior(A, nv, y)
    log_ev = [
        math.log(w[k])
        + multivariate_normal(A @ mu[k], A @ covs[k] @ A.T + nv * np.eye(2)).logpdf(y)
        for k in range(K)
    ]
    np.testing.assert_allclose(post.weights.numpy(), softmax(log_ev), rtol=1e-9)


# -- grid_gmm ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [2, 6])
def test_grid_gmm_means_on_grid(dim):
    """grid_gmm has 25 components whose means are the 5x5 grid pattern repeated to dim d."""
    spacing = 3.0
    gmm = grid_gmm(dim=dim, spacing=spacing)
    assert gmm.num_components == 25 and gmm.dim == dim
    grid = sorted(itertools.product([spacing * i for i in range(-2, 3)], repeat=2))
    means = gmm.means.numpy()
    assert sorted(map(tuple, means[:, :2])) == grid
    for j in range(1, dim // 2):
        np.testing.assert_array_equal(means[:, 2 * j : 2 * j + 2], means[:, :2])


def test_grid_gmm_identity_covariance_and_weights():
    """grid_gmm: tied identity covariance; 'equal' weights are 1/25; 'random' ones are seeded."""
    eq = grid_gmm(dim=4, weights="equal")
    assert eq.tied
    torch.testing.assert_close(eq.covs[0], torch.eye(4, dtype=F64))
    torch.testing.assert_close(eq.weights, torch.full((25,), 1 / 25, dtype=F64))
    r0, r0b, r1 = (grid_gmm(dim=4, seed=s).weights for s in (0, 0, 1))
    torch.testing.assert_close(r0, r0b)
    assert not torch.allclose(r0, r1)
    assert float(r0.sum()) == pytest.approx(1.0) and float(r0.std()) > 0


def test_grid_gmm_rejects_bad_arguments():
    """grid_gmm raises ValueError for odd dimensions and unknown weight schemes."""
    with pytest.raises(ValueError):
        grid_gmm(dim=3)
    with pytest.raises(ValueError):
        grid_gmm(dim=4, weights="uniform")


# -- AnalyticPrior -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_analytic_prior_keeps_dtype_and_shape(dtype):
    """forward returns the input's dtype and shape (GMM and field priors)."""
    g = torch.Generator().manual_seed(20)
    for prior in (AnalyticPrior(grid_gmm(dim=4), shape=(1, 2, 2)), AnalyticPrior(matern_field(8))):
        x = torch.randn(3, *prior.shape, generator=g).to(dtype)
        out = prior(x, 0.5)
        assert out.dtype == dtype and out.shape == x.shape
        ref = prior.distribution.denoise(x.reshape(3, -1).double(), 0.5).reshape(x.shape)
        torch.testing.assert_close(out, ref.to(dtype))


def test_analytic_prior_scalar_and_per_row_sigma():
    """A per-row sigma gives each row the result of a scalar-sigma call; a bad size raises."""
    prior = AnalyticPrior(grid_gmm(dim=4, weights="random"), shape=(1, 2, 2))
    x = 4 * torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(21), dtype=F64)
    sigmas = torch.tensor([0.1, 1.0, 5.0, 30.0], dtype=F64)
    out = prior(x, sigmas)
    for i, s in enumerate(sigmas):
        torch.testing.assert_close(out[i : i + 1], prior(x[i : i + 1], float(s)))
        torch.testing.assert_close(out[i : i + 1], prior(x[i : i + 1], s))
    with pytest.raises(ValueError):
        prior(x, sigmas[:3])


def test_analytic_prior_huge_sigma_returns_prior_mean():
    """At sigma = 1e6 the denoiser returns the prior mean (to 1e-6) for any input."""
    gmm = grid_gmm(dim=4, weights="random", seed=2)
    prior = AnalyticPrior(gmm, shape=(4, 1, 1))
    x = 10 * torch.randn(5, 4, 1, 1, generator=torch.Generator().manual_seed(22), dtype=F64)
    out = prior(x, 1e6).reshape(5, 4)
    assert gmm.mean().abs().max() > 0.5  # a non-trivial mean
    torch.testing.assert_close(out, gmm.mean().expand(5, 4), rtol=0, atol=1e-6)


def test_analytic_prior_shape_and_sample():
    """A shape inconsistent with the dimension raises; sample returns (n, C, H, W) draws."""
    with pytest.raises(ValueError):
        AnalyticPrior(grid_gmm(dim=4), shape=(1, 3, 3))
    prior = AnalyticPrior(matern_field(8))
    assert prior.shape == (1, 8, 8)
    assert prior.sample(3, torch.Generator().manual_seed(23)).shape == (3, 1, 8, 8)


def test_field_is_a_stationary_gaussian_field_instance():
    """matern_field gives a StationaryGaussianField with a positive spectrum symmetric in k."""
    f = matern_field(size=8)
    assert isinstance(f, StationaryGaussianField)
    spec = f.spectrum
    assert torch.all(spec > 0)
    flipped = torch.roll(torch.flip(spec, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))  # k -> -k
    torch.testing.assert_close(flipped, spec, rtol=0, atol=0)
