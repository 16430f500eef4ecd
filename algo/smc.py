"""Sequential Monte Carlo machinery shared by FPS, MCG-Diff and DDSMC: resampling (multinomial,
stratified, systematic) from given uniforms, reweighting with an effective-sample-size rule, and
picking particles.
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64

RESAMPLING = ("multinomial", "stratified", "systematic")


def resample(log_w, uniforms, method="multinomial"):
    """Ancestor indices (..., P) drawn from the normalized weights of each group (last dim P),
    given uniforms (..., P) in [0, 1): multinomial, stratified or systematic (one uniform per
    group, the first). Non-finite log-weights count as zero weight; an all-zero group is uniform."""
    log_w = torch.where(torch.isfinite(log_w), log_w.to(F64), -math.inf)
    dead = torch.isinf(log_w.amax(-1, keepdim=True))
    log_w = torch.where(dead, torch.zeros_like(log_w), log_w)
    cdf = torch.softmax(log_w, -1).cumsum(-1)
    cdf = cdf / cdf[..., -1:]
    P = uniforms.shape[-1]
    u = uniforms.to(F64)
    if method == "stratified":
        u = (torch.arange(P, dtype=F64, device=u.device) + u) / P
    elif method == "systematic":
        u = (torch.arange(P, dtype=F64, device=u.device) + u[..., :1]) / P
    elif method != "multinomial":
        raise ValueError(f"resampling must be one of {RESAMPLING}, got {method!r}")
    idx = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True)
    return idx.clamp_max(log_w.shape[-1] - 1)


def reweight(log_W, log_w, uniforms, ess_threshold=1.0, method="multinomial"):
    """Adds incremental log-weights log_w to the running ones log_W (both (B, G, P)) and
    resamples the groups whose effective sample size falls below ``ess_threshold`` x P (1: every
    group whose weights are not uniform, as the papers do every step). Returns the ancestor
    indices (identity where not resampled) and the running log-weights after the step."""
    log_W = log_W + log_w
    log_W = torch.where(torch.isfinite(log_W), log_W, -math.inf)
    P = log_W.shape[-1]
    norm = torch.logsumexp(log_W, -1, keepdim=True)
    ess = 1.0 / torch.exp(2 * (log_W - norm)).sum(-1, keepdim=True)
    ess = torch.nan_to_num(ess, nan=0.0)
    redo = ess < ess_threshold * P * (1 - 1e-9)
    keep = torch.arange(P, device=log_W.device).expand_as(log_W)
    idx = torch.where(redo, resample(log_W, uniforms, method), keep)
    log_W = torch.where(redo, torch.zeros_like(log_W), torch.nan_to_num(log_W - norm, nan=0.0))
    return idx, log_W


def take(x, idx):
    """Particles x (B, G, P, ...) at indices idx (B, G, Q) along the particle dimension."""
    idx = idx.reshape(*idx.shape, *[1] * (x.dim() - 3)).expand(*idx.shape, *x.shape[3:])
    return torch.gather(x, 2, idx)


def pick_one(x, log_w, rng):
    """One particle per sample (B, G, P, d) -> (B*G, d), drawn by the weights (one uniform per
    sample from ``rng``, whose rows are the samples)."""
    B, G = x.shape[:2]
    u = rng.rand(dtype=F64).to(x.device).reshape(B, G, 1)
    return take(x, resample(log_w, u)).reshape(B * G, -1)
