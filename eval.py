"""Evaluators: per-item metrics in physical units, aggregated once.

``evaluator(pred, target, observation)`` receives one test item: ``pred`` (N, C, H, W) samples and
``target`` (1, C, H, W), both unnormalized, and the item's ``Observation``. It returns the item's
metric values and keeps them; ``compute()`` gives ``{name: mean, name_std: std}`` over the items.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from utils.metrics import random_directions, sliced_wasserstein


def piq_per_sample(fn, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``fn(pred, target, data_range=1, reduction='none')`` (a piq metric) per sample, NaN for
    samples with non-finite values (piq rejects them; the harness counts such samples in its
    ``nonfinite`` column) instead of failing the whole item."""
    finite = torch.isfinite(pred.flatten(1)).all(1)
    out = torch.full((pred.shape[0],), float("nan"), dtype=torch.float64)
    if bool(finite.any()):
        values = fn(pred[finite], target[finite], data_range=1.0, reduction="none")
        out[finite] = values.to(torch.float64)
    return out


class Evaluator:
    def __init__(self, forward_op=None):
        self.forward_op = forward_op
        self.metric_state: dict[str, list[float]] = defaultdict(list)

    def evaluate(self, pred, target, observation=None) -> dict[str, float]:
        raise NotImplementedError

    def __call__(self, pred, target, observation=None) -> dict[str, float]:
        values = {k: float(v) for k, v in self.evaluate(pred, target, observation).items()}
        for k, v in values.items():
            self.metric_state[k].append(v)
        return values

    def compute(self) -> dict[str, float]:
        out = {}
        for k, vals in self.metric_state.items():
            arr = np.asarray(vals, dtype=np.float64)
            out[k] = float(arr.mean())
            out[f"{k}_std"] = float(arr.std())
        return out


def dense_matrix(forward_op, observation, shape) -> torch.Tensor:
    """The matrix of a linear operator for one item, by applying it to the standard basis."""
    d = int(np.prod(shape))
    eye = torch.eye(d, dtype=torch.float64, device=observation.y.device).reshape(d, *shape)
    with torch.no_grad():
        cols = forward_op.forward(eye, **observation.physics)  # (d, m)
    return cols.reshape(d, -1).T


class ExactPosterior(Evaluator):
    """Compares samples with the exact posterior of a linear-Gaussian problem under a closed-form
    prior (``distribution``: utils/distributions.py).

    Metrics (choose with ``metrics``):
      * ``sw``: sliced Wasserstein-1 to ``num_reference`` exact posterior samples, averaged over
        ``num_projections`` fixed random directions (seeded);
      * ``mode_tv``: total variation between the mass per mixture component of the samples
        (each sample assigned to its most responsible posterior component) and the exact posterior
        weights;
      * ``mean_rel_err`` / ``std_rel_err``: relative L2 error of the sample mean / pixelwise
        standard deviation against the exact ones.
    """

    known = ("sw", "mode_tv", "mean_rel_err", "std_rel_err")

    def __init__(
        self,
        distribution,
        forward_op=None,
        metrics=("sw", "mode_tv"),
        num_reference: int = 10_000,
        num_projections: int = 256,
        seed: int = 0,
    ):
        super().__init__(forward_op)
        unknown = set(metrics) - set(self.known)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {self.known}")
        self.prior = (
            distribution.to_mixture() if hasattr(distribution, "to_mixture") else (distribution)
        )
        self.metrics = tuple(metrics)
        self.num_reference = int(num_reference)
        self.seed = int(seed)
        self.directions = random_directions(num_projections, self.prior.dim, seed)

    def posterior(self, observation, shape):
        A = dense_matrix(self.forward_op, observation, shape)
        var = self.forward_op.noise_std(observation.physics, 1).to(torch.float64).square()
        prior = self.prior.to(observation.y.device)
        return prior.posterior(A, var, observation.y.reshape(-1).to(torch.float64))

    def evaluate(self, pred, target, observation=None):
        post = self.posterior(observation, pred.shape[1:])
        x = pred.reshape(pred.shape[0], -1).to(torch.float64)
        out = {}
        if "sw" in self.metrics:
            g = torch.Generator().manual_seed(self.seed)
            ref = post.sample(self.num_reference, g)
            out["sw"] = sliced_wasserstein(x, ref, self.directions)
        if "mode_tv" in self.metrics:
            k = post.responsibilities(x).argmax(1)
            mass = torch.bincount(k, minlength=post.num_components).double() / x.shape[0]
            out["mode_tv"] = 0.5 * float((mass - post.weights.cpu()).abs().sum())
        if "mean_rel_err" in self.metrics or "std_rel_err" in self.metrics:
            mean, std = mixture_moments(post)
            if "mean_rel_err" in self.metrics:
                out["mean_rel_err"] = float((x.mean(0) - mean).norm() / mean.norm())
            if "std_rel_err" in self.metrics:
                s = x.std(0) if x.shape[0] > 1 else torch.zeros_like(std)
                out["std_rel_err"] = float((s - std).norm() / std.norm())
        return out


def mixture_moments(mix):
    """Mean and per-coordinate standard deviation of a Gaussian mixture."""
    mean = mix.weights @ mix.means
    var_k = torch.diagonal(mix.covs, dim1=-2, dim2=-1)  # (K', d)
    second = mix.weights @ (var_k.expand_as(mix.means) + mix.means.square())
    return mean, (second - mean.square()).clamp_min(0).sqrt()


class NavierStokes2d(Evaluator):
    """Relative L2 error ||pred - target|| / ||target|| per sample, averaged over the samples
    (the reference's metric for the Navier–Stokes problem)."""

    def evaluate(self, pred, target, observation=None):
        err = (pred - target).flatten(1).norm(dim=1) / target.flatten().norm()
        return {"relative_l2": float(err.mean())}


class InverseScatter(Evaluator):
    """PSNR and SSIM (piq, data range 1) of the permittivity clipped to [0, 1], per sample and
    averaged over the item's samples (the reference's metrics for inverse scattering)."""

    def evaluate(self, pred, target, observation=None):
        import piq

        p = pred.to(torch.float32).clamp(0, 1)
        t = target.to(torch.float32).clamp(0, 1).expand_as(p)
        psnr = piq_per_sample(piq.psnr, p, t)
        ssim = piq_per_sample(piq.ssim, p, t)
        return {"psnr": float(psnr.mean()), "ssim": float(ssim.mean())}


class MRI(Evaluator):
    """The reference's MRI metrics, per sample and averaged over the item's samples (for every
    number of samples; the reference's batching returns nothing for 1 < N < 32): PSNR and SSIM of
    magnitude images with the prediction clipped to [0, max target] and data range max target
    (piq), and the data misfit ||A(x_hat) - y||_2 when the operator and observation are given."""

    def evaluate(self, pred, target, observation=None):
        import piq

        def magnitude(z):
            z = z.to(torch.float64)
            return z.square().sum(1, keepdim=True).sqrt()

        t = magnitude(target)
        top = float(t.max())
        p = magnitude(pred).clamp(0, top) / top
        t = (t / top).expand_as(p)
        out = {
            "psnr": float(piq_per_sample(piq.psnr, p, t).mean()),
            "ssim": float(piq_per_sample(piq.ssim, p.float(), t.float()).mean()),
        }
        if self.forward_op is not None and observation is not None:
            with torch.no_grad():
                m = self.forward_op.forward(pred.to(torch.float64), **observation.physics)
            misfit = (m - observation.y.to(m.dtype)).flatten(1).norm(dim=1)
            out["data_misfit"] = float(misfit.mean())
        return out
