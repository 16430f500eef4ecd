"""Stochastic Control Guidance (Huang, Ghatare, Liu, Hu, Zhang, Sastry, Gururani, Oore and Yue,
"Symbolic Music Generation with Non-Differentiable Rule Guided Diffusion", ICML 2024), the
best-of-K form InverseBench runs: derivative-free (only the operator's ``loss`` is called, and
nothing is back-propagated). Reference defaults: VP grid, 1000 steps, 512 candidates, guidance
from 25 % of the steps on.

With N steps and T = int(threshold * N), for every sample row:

* steps i < T: plain reverse-SDE Euler-Maruyama steps;
* steps T <= i < N - 1: K = ``num_candidates`` next states x_{i+1}^k (the SDE step with K noise
  draws), each denoised at sigma_{i+1}; keep the candidate whose x0_hat has the smallest
  ||y - A(x0_hat)||^2 (the paper's path-integral control with the optimal-control limit taken:
  the best sample of the one-step proposal);
* the last step returns the denoiser output x0_hat (as the reference).

Candidates are drawn, denoised and scored in blocks of ``batch_size`` per sample row (one network
call and one ``loss`` call of rows x batch_size each) while a running best is kept, so memory does
not grow with K.

Counts per sample: N + K (N - 1 - T) - (N - 1 - T) NFE (the chosen candidate's x0_hat is reused
as the next step's denoising) and K (N - 1 - T) loss rows.

Deviations from the reference code:

* Reference bug fixed in compat=corrected (kept in compat=reference, see below): at i == T the
  reference fell through to ``x_next = denoised`` (a jump to x0_hat in the middle of sampling).
  Here i == T is the first guided step.
* The chosen candidate's denoised output is reused for the next step's score instead of
  denoising it again (the same value; one NFE less per guided step).
* ``num_samples > 1`` runs all samples together (the reference loops over them) with per-row
  candidates; ``num_candidates`` need not be a multiple of ``batch_size``.
* All randomness comes from the per-row streams (results do not depend on batching).

``compat=reference`` (utils/compat.py) keeps the reference's jump: at i == T the state becomes
the denoised x0_hat (unscaled, and then read as the scaled state of grid point T + 1), with no
draw; guidance starts at T + 1. That equals the reference to float rounding at batch 1.
"""

from __future__ import annotations

import torch

from algo.base import Algo
from utils.compat import check_compat
from utils.diffusion import denoise_scaled, euler_step
from utils.progress import report
from utils.scheduler import Scheduler


class SCG(Algo):
    requires = frozenset()

    def __init__(
        self,
        net,
        forward_op,
        diffusion_scheduler_config,
        num_candidates: int = 8,
        threshold: float = 0.25,
        batch_size: int = 8,
        compat: str = "corrected",
    ):
        super().__init__(net, forward_op)
        self.compat = check_compat(compat, "SCG compat")
        if int(num_candidates) < 1 or int(batch_size) < 1:
            raise ValueError(
                f"num_candidates and batch_size must be >= 1, got {num_candidates}, {batch_size}"
            )
        self.scheduler = Scheduler(**diffusion_scheduler_config)
        self.num_candidates = int(num_candidates)
        self.threshold = float(threshold)
        self.batch_size = int(batch_size)

    @property
    def first_guided_step(self) -> int:
        return int(self.scheduler.num_steps * self.threshold)

    def _best_candidate(self, x, score, i, observation, rng):
        """Best of K SDE proposals for step i -> i+1 per row: (x_next, its x0_hat, its loss)."""
        sched, rows, k = self.scheduler, x.shape[0], self.num_candidates
        best_loss = torch.full((rows,), float("inf"), dtype=torch.float64, device=x.device)
        best_x, best_x0 = torch.empty_like(x), torch.empty_like(x)
        for start in range(0, k, self.batch_size):
            c = min(self.batch_size, k - start)
            noise = rng.randn(c, *x.shape[1:]).to(x.device, x.dtype)  # (rows, c, ...)
            cand = euler_step(x.unsqueeze(1), score.unsqueeze(1), sched, i, True, noise)
            cand = cand.reshape(rows * c, *x.shape[1:])
            x0, _ = denoise_scaled(self.net, cand, sched, i + 1)
            loss = self.forward_op.loss(x0, observation).double().reshape(rows, c)
            chunk_loss, idx = loss.min(1)  # first minimum within the block
            better = chunk_loss < best_loss  # strict: earlier blocks win ties
            pick = torch.arange(rows, device=x.device) * c + idx
            best_x[better] = cand[pick][better]
            best_x0[better] = x0[pick][better]
            best_loss = torch.where(better, chunk_loss, best_loss)
        return best_x, best_x0, best_loss

    @torch.no_grad()
    def inference(self, observation, num_samples=1, rng=None):
        rng = self.sample_rng(observation, num_samples, rng)
        sched = self.scheduler
        n_steps, first = sched.num_steps, self.first_guided_step
        x = rng.randn(*self.shape).to(observation.y.device) * sched.sigma_max
        x0 = None  # x0_hat of the current x when the previous step already computed it
        for i in range(n_steps):
            s, sig = float(sched.scaling_steps[i]), float(sched.sigma_steps[i])
            if x0 is None:
                x0, score = denoise_scaled(self.net, x, sched, i)
            else:
                score = (x0 - x / s) / (sig**2 * s)
            if i == n_steps - 1:
                report(i, n_steps)
                return x0  # the reference's last step: the denoised estimate
            if i < first:
                x = euler_step(x, score, sched, i, True, rng.randn_like(x))
                x0 = None
                report(i, n_steps)
            elif i == first and self.compat == "reference":
                x, x0 = x0, None  # the reference's jump to x0_hat at i == T
                report(i, n_steps)
            else:
                x, x0, loss = self._best_candidate(x, score, i, observation, rng)
                report(i, n_steps, data_fitting_loss=loss.sqrt())
        return x  # unreachable for num_steps >= 1
