"""DAPS: Decoupled Annealing Posterior Sampling (Zhang et al., "Improving Diffusion Inverse Problem
Solving with Decoupled Noise Annealing", CVPR 2025; arXiv 2407.01521), Algorithm 1.

On the annealing grid sigma_0 > ... > sigma_{N-1} > sigma_N (= sigma_final), x ~ N(0, sigma_0^2):

1. x0_hat = probability-flow ODE from x at sigma_k to 0 (a short Euler grid of
   ``diffusion_scheduler_config``, built from sigma_k down);
2. x0_y ~ p(x0 | x, y) ∝ N(x0; x0_hat, r_k^2 I) exp(-||y - A(x0)||^2 / (2 tau^2)) by
   ``lgvd.num_steps`` unadjusted Langevin steps started at x0_hat, with
   r_k = sigma_k (as the official code) and a step size decaying linearly from ``lr`` at the first
   annealing step to ``lr * lr_min_ratio`` at the last;
3. x <- x0_y + sigma_{k+1} eps (decoupled re-noising).

tau is the std of the Gaussian likelihood, in measurement units: for y = A(x) + N(0, sigma_y^2)
the likelihood term is the true one only when tau = sigma_y (DAPS stays approximate even then,
through p(x0 | x_k) ~ N(x0_hat, sigma_k^2 I)). The reference fixes tau = 0.01 for every problem;
``tau: null`` takes each item's sigma_y from the operator (``noise_std``), as the tuned configs of
the exact-posterior problems do.

Deviations from the reference code:
* A row whose Langevin run diverges (non-finite values) raises ``FloatingPointError`` naming the
  items, the annealing step and the step size. The reference silently returned zeros for the
  whole batch and carried on.
* Noise is drawn per row from the caller's per-item streams, so a sample does not depend on the
  batch (the reference's ``torch.randn_like``); the observation is broadcast, not repeated.
* ``tau: null`` (per-item noise level) is new; the reference has one number.
* ``exact_linear: true`` (new, off by default) replaces the Langevin run by an exact draw of the
  Gaussian p(x0 | x_k, y) for a linear operator with Gaussian noise (``LinearGaussian.sample``:
  closed form through the SVD, else perturb-and-solve with conjugate gradients). It isolates the
  annealing scheme from the Langevin discretization on the exact-posterior problems.
"""

from __future__ import annotations

import torch

from algo.base import Algo
from algo.langevin import Langevin, check_finite, check_sigma_grid, grid_from, integrate_from
from algo.linear_gaussian import LinearGaussian
from utils.compat import check_compat
from utils.progress import report
from utils.scheduler import Scheduler


class DAPS(Algo):
    requires = frozenset({"gradient"})

    def __init__(
        self,
        net,
        forward_op,
        annealing_scheduler_config,
        diffusion_scheduler_config,
        lgvd_config,
        exact_linear: bool = False,
        compat: str = "corrected",
    ):
        """``compat`` (utils/compat.py): both modes compute the same thing here (the
        differences listed above are fixes of crashes, silent zeros and batch coupling)."""
        self.compat = check_compat(compat, "DAPS compat")
        self.exact_linear = bool(exact_linear)
        if self.exact_linear:
            self.requires = LinearGaussian.requirements(forward_op)
        super().__init__(net, forward_op)
        self.solver = LinearGaussian(forward_op, self.shape) if self.exact_linear else None
        self.annealing = Scheduler(**annealing_scheduler_config)
        config = dict(diffusion_scheduler_config)
        check_sigma_grid(config, "DAPS")
        # One ODE grid per annealing level, from sigma_k down (the reference rebuilds it per step).
        self.ode_grids = [grid_from(config, float(s)) for s in self.annealing.sigma_steps[:-1]]
        self.lgvd = Langevin(**lgvd_config)

    @torch.no_grad()
    def inference(self, observation, num_samples=1, rng=None):
        rng = self.sample_rng(observation, num_samples, rng)
        sched, lgvd = self.annealing, self.lgvd
        x = rng.randn(*self.shape).to(observation.y.device) * float(sched.sigma_steps[0])
        tau = lgvd.tau_rows(self.forward_op, observation, x)
        data = self.solver.prepare(observation, x.dtype) if self.exact_linear else None
        N = sched.num_steps
        for k in range(N):
            sigma = float(sched.sigma_steps[k])
            # 1. Reverse diffusion: ODE from sigma_k to 0.
            x0_hat = integrate_from(self.net, x, self.ode_grids[k], sde=False)
            # 2. Sample p(x0 | x_k, y) ∝ N(x0; x0_hat, sigma_k^2) L(y | x0): Langevin, or exactly.
            lr = lgvd.step_size(k / N)
            if self.exact_linear:
                x0_y = self.solver.sample(x0_hat, sigma, tau, observation, data, rng)
            else:
                x0_y = lgvd.run(self.forward_op, observation, x0_hat, x0_hat, sigma, tau, lr, rng)
            check_finite(
                x0_y,
                observation.batch,
                "DAPS",
                f"at annealing step {k} (sigma={sigma:.3g}, lr={lr:.3g})",
                "Lower lgvd.lr or raise lgvd.tau: the step must stay below "
                "~2 / (||A||^2 / tau^2 + 1 / sigma^2).",
            )
            # 3. Forward diffusion to the next level.
            x = x0_y + float(sched.sigma_steps[k + 1]) * rng.randn_like(x0_y)
            report(k, N)
        return x
