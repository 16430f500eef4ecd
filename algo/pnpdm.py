"""PnP-DM (Wu et al., "Principled Probabilistic Imaging using Diffusion Models as Plug-and-Play
Priors", NeurIPS 2024), Algorithm 1: a split Gibbs sampler with an annealed coupling strength.

The augmented target pi(x, z) ∝ p(x) N(z; x, rho^2 I) exp(-||y - A(z)||^2 / (2 tau^2)) has the
x-marginal p(x) (L_tau * N(0, rho^2))(x), which tends to the posterior p(x | y) as rho -> 0 when
tau = sigma_y. Gibbs sweeps alternate its two conditionals, with rho_k = max(sigma_max rho^k,
sigma_min) (``annealing_scheduler_config``: sigma_max, sigma_min, rho the decay, num_steps):

1. likelihood step: z ~ pi(z | x) ∝ exp(-||y - A(z)||^2 / (2 tau^2) - ||z - x||^2 / (2 rho_k^2)),
   ``lgvd.num_steps`` unadjusted Langevin steps started at x (the reference's choice for general
   operators), or, with ``exact_linear: true`` for a linear operator, an exact draw of this
   Gaussian (as the paper does for its linear tasks; ``LinearGaussian.sample`` in
   algo/diffpir.py: closed form through the SVD, else perturb-and-solve with conjugate
   gradients);
2. prior step: x ~ pi(x | z) ∝ p(x) N(z; x, rho_k^2): the denoising posterior of a diffusion
   model at noise level rho_k, sampled by the reverse SDE (Euler-Maruyama) started at z at noise
   level exactly rho_k and run to ``sigma_final`` (the paper's EDM-based prior step).

The output is the last prior-step sample x. tau is the likelihood's std in measurement units: the
chain targets the exact posterior (as rho -> 0, with exact conditionals) only when tau = sigma_y.
The reference's tau = 1 is tuned for its black-hole data; ``tau: null`` takes each item's sigma_y
from the operator (``noise_std``), which the tuned configs of the exact-posterior problems use.

Deviations from the reference code:
* Prior step grid: the reference runs the tail of its diffusion grid that starts at the last grid
  point with sigma >= rho_k (the official PnP-DM code: the first point below rho_k), so the state z
  -- noisy at level rho_k -- is treated as noisier (or cleaner) than it is, by up to one grid
  spacing (~10 % of sigma for 100 poly-7 steps). Here the tail is rebuilt to start exactly at
  rho_k, with the same number of steps as the reference's tail (same NFE).
* ``lgvd.lr_min_ratio`` is honoured (default 1: constant step, as the reference, which forced it
  to 1); the Langevin noise comes from the per-row streams and divergence raises
  ``FloatingPointError`` (see algo/daps.py) instead of returning zeros.
* ``exact_linear`` is new (the reference always runs Langevin).
* The reference evaluates the loss after every sweep only to print it; that is dropped (saves
  ``annealing.num_steps`` operator calls per sample).

``compat=reference`` (utils/compat.py) reproduces the reference's numbers at batch 1: the prior
step runs the reference's tail of the base grid (from the last grid point with sigma >= rho_k)
with its partial scheduler's off-by-one -- the tail's step factors (2 sigma dsigma dt, and the
scaling factors) are taken one entry early, so step j from sigma_{s+j} uses the factor of
sigma_{s+j-1} -> sigma_{s+j} and the last step, to sigma_final, is never taken at its own size;
``lgvd.lr_min_ratio`` is forced to 1, as the reference does. A diverged Langevin run still
raises (the reference returned zeros).
"""

from __future__ import annotations

import torch

from algo.base import Algo
from algo.langevin import Langevin, check_finite, check_sigma_grid, grid_from, integrate_from
from algo.linear_gaussian import LinearGaussian
from utils.compat import check_compat
from utils.progress import report
from utils.scheduler import Scheduler, partial_scheduler


def exponential_decay(num_steps: int, sigma_max: float, sigma_min: float, rho: float = 0.9):
    """rho_k = max(sigma_max * rho^k, sigma_min), k = 0 .. num_steps - 1."""
    if not 0 < rho <= 1:
        raise ValueError(f"annealing rho (decay per step) must be in (0, 1], got {rho}")
    return [max(float(sigma_min), float(sigma_max) * float(rho) ** k) for k in range(num_steps)]


def reference_tail(base: Scheduler, sigma: float) -> Scheduler:
    """The reference's ``Scheduler.get_partial_scheduler(base, sigma)``: the tail of ``base``
    from its last grid point with sigma >= ``sigma``, whose per-step factors are taken one entry
    early (it slices the N per-step arrays with the length of the N + 1 grid points; no shift when
    the tail is the whole grid)."""
    tail = partial_scheduler(base, sigma)
    start = base.num_steps - tail.num_steps
    if start > 0:
        for name in ("scaling_factor", "factor_steps", "dt_steps"):
            setattr(tail, name, getattr(base, name)[start - 1 : start - 1 + tail.num_steps])
    return tail


class PnPDM(Algo):
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
        self.compat = check_compat(compat, "PnPDM compat")
        self.exact_linear = bool(exact_linear)
        if self.exact_linear:
            self.requires = LinearGaussian.requirements(forward_op)
        super().__init__(net, forward_op)
        self.solver = LinearGaussian(forward_op, self.shape) if self.exact_linear else None
        self.rhos = exponential_decay(**annealing_scheduler_config)
        config = dict(diffusion_scheduler_config)
        check_sigma_grid(config, "PnPDM")
        base = Scheduler(**config)
        # Prior-step grid per distinct rho: as many steps as the base grid's tail below rho.
        self.prior_grids = {}
        for rho in self.rhos:
            if rho in self.prior_grids:
                continue
            if self.compat == "reference":
                self.prior_grids[rho] = reference_tail(base, rho)
            else:
                steps = partial_scheduler(base, rho).num_steps
                self.prior_grids[rho] = grid_from({**config, "num_steps": steps}, rho)
        lgvd_config = {"lr_min_ratio": 1.0, **lgvd_config}
        if self.compat == "reference":
            lgvd_config["lr_min_ratio"] = 1.0  # the reference overrides it
        self.lgvd = Langevin(**lgvd_config)

    @torch.no_grad()
    def inference(self, observation, num_samples=1, rng=None):
        rng = self.sample_rng(observation, num_samples, rng)
        lgvd = self.lgvd
        x = rng.randn(*self.shape).to(observation.y.device)
        tau = lgvd.tau_rows(self.forward_op, observation, x)
        data = self.solver.prepare(observation, x.dtype) if self.exact_linear else None
        N = len(self.rhos)
        for k, rho in enumerate(self.rhos):
            # 1. Likelihood step: z ~ pi(z | x), by Langevin started at x or exactly.
            lr = lgvd.step_size(k / N)
            if self.exact_linear:
                z = self.solver.sample(x, rho, tau, observation, data, rng)
            else:
                z = lgvd.run(self.forward_op, observation, x, x, rho, tau, lr, rng)
            check_finite(
                z,
                observation.batch,
                "PnPDM",
                f"at sweep {k} (rho={rho:.3g}, lr={lr:.3g})",
                "Lower lgvd.lr or raise lgvd.tau: the step must stay below "
                "~2 / (||A||^2 / tau^2 + 1 / rho^2).",
            )
            # 2. Prior step: x ~ p(x | z), reverse SDE from noise level rho.
            x = integrate_from(self.net, z, self.prior_grids[rho], sde=True, rng=rng)
            report(k, N)
        return x
