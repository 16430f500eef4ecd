"""Pseudoinverse-Guided Diffusion Models (Song, Vahdat, Mardani and Kautz, "Pseudoinverse-Guided
Diffusion Models for Inverse Problems", ICLR 2023), Algorithm 1, for linear operators, on any
``Scheduler`` grid (reference: VE, sigma = sqrt(t), 100 log-spaced steps from 100 to 0.01).

ΠGDM approximates p(x_0 | x_t) by N(x0_hat, r_t^2 I) with r_t^2 = sigma^2 / (1 + sigma^2), so
p(y | x_t) ~ N(A x0_hat, r_t^2 A A^T + sigma_y^2 I) (their Sec. 3). Each step, in the unscaled
variable u = x / s (u = x_0 + sigma eps):

    x0_hat = D(u; sigma),
    v      = A^T (A A^T + c I)^{-1} (y - A x0_hat),   c = sigma_y^2 (1 + sigma^2) / sigma^2
           = r_t^2 A^T (r_t^2 A A^T + sigma_y^2 I)^{-1} (y - A x0_hat)       (``noisy=True``),
    v      = A^+ (y - A x0_hat)                                               (``noisy=False``),
    g      = (d x0_hat / d u)^T v                  (a VJP through the network),
    u'     = x0_hat + sqrt(1 - eta^2) sigma'/sigma (u - x0_hat) + eta sigma' eps + g,

a DDIM step plus the guidance weighted by r_t^2, as in the paper's noiseless case, where the
weighted vector reduces to A^+ (y - A x0_hat). The output is the final unscaled state u (at
sigma_final).

The noisy solve uses the SVD A = U diag(S) V_m^T, with no dense matrix:
A^T (A A^T + c I)^{-1} r = V [S / (S^2 + c) * U^T r ; 0], so the operator needs ``svd``. The
residual y - forward(x0_hat) removes an affine offset of the operator by itself. The noiseless mode
needs ``pseudo_inverse`` (and nothing else).

Deviations from the reference code:

* The noisy solve goes through the SVD pieces per item instead of inverting the dense
  A A^T + c I (impractical beyond toy sizes, and it needs the explicit matrix ``A``).
* sigma_y is the per-item noise_std of the observation (the reference uses the operator's
  configured ``sigma_noise``), floored at 1e-4 as in the reference (it keeps c > 0 when the data
  are noise-free).
* Any scaling (VP grids too): the iteration runs on the unscaled u; the reference's noisy branch
  feeds the scaled state to the network (right only when s = 1, its default grid).
* Per row: every sample gets its own guidance (the reference flattens the whole batch into one
  vector, right only for a single sample). All randomness comes from the per-item streams
  (results do not depend on batching).

``compat=reference`` (utils/compat.py) reproduces the reference's numbers at batch 1:

* noisy mode: the reference solves with the *physical* matrix A_phys (x in physical units,
  x_phys = (x + shift) * unnorm_scale) but differentiates through the normalized network output,
  so its guidance is unnorm_scale * A_phys^T (A_phys A_phys^T + c I)^{-1} r; with the normalized
  operator L = unnorm_scale * A_phys = U diag(S) V^T that is V [S / (S^2 / unnorm_scale^2 + c)]
  U^T r instead of the consistent V [S / (S^2 + c)] U^T r. Where S^2 dominates c this is
  unnorm_scale^2 times the consistent guidance (1/4 at inverse scattering's 0.5); at
  unnorm_scale 1 the two agree. c uses the configured ``sigma_noise`` (floored at 1e-4) as the
  std of a real entry, without the 1/sqrt(2) of complex measurements nor per-item values;
* noisy and noiseless: the start x_T = sigma_max eps is taken as the unscaled state, so on a VP
  grid the network gets the scaled state (the same as ``corrected`` on the reference's default VE
  grid, where s = 1).
"""

from __future__ import annotations

import math

import torch

from algo.base import Algo, singular_values
from inverse_problems.base import group_rows
from utils.compat import check_compat
from utils.progress import report
from utils.scheduler import Scheduler

SIGMA_Y_FLOOR = 1e-4


class PiGDM(Algo):
    #: the needs of the default mode (noisy=True); __init__ sets the instance's per mode
    requires = frozenset({"linear", "svd"})

    def __init__(
        self,
        net,
        forward_op,
        scheduler_config,
        eta: float = 0.2,
        noisy: bool = False,
        compat: str = "corrected",
    ):
        self.compat = check_compat(compat, "PiGDM compat")
        self.noisy = bool(noisy)
        # Instance attribute, read by Algo.__init__: the needs depend on the mode.
        self.requires = frozenset({"linear", "svd"} if self.noisy else {"linear", "pseudo_inverse"})
        super().__init__(net, forward_op)
        if not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        self.scheduler = Scheduler(**scheduler_config)
        self.eta = float(eta)

    def _guidance_vector(self, residual, observation, sigma: float, rows: int):
        """A^T (A A^T + c I)^{-1} residual (noisy) or A^+ residual, as rows (R, C, H, W)."""
        physics = observation.physics
        if not self.noisy:
            return self.forward_op.pseudo_inverse(residual, **physics).reshape(rows, *self.shape)
        batch = observation.batch
        s = singular_values(self.forward_op, observation)  # (B, m)
        if self.compat == "reference":
            # The configured sigma_noise and physical units (see the module docstring).
            sigma_y = torch.full((batch,), float(self.forward_op.sigma_noise), device=s.device)
            s2 = s.square() / float(self.forward_op.unnorm_scale) ** 2
        else:
            sigma_y = self.forward_op.noise_std(physics, batch).to(s.device, torch.float64)
            s2 = s.square()
        c = sigma_y.to(torch.float64).clamp_min(SIGMA_Y_FLOOR).square() * (1.0 + sigma**2)
        c = c / sigma**2  # (B,)
        gain = s / (s2 + c.unsqueeze(1))  # (B, m)
        z = group_rows(self.forward_op.Ut(residual, **physics), batch)  # (B, n, m)
        z = z * gain.unsqueeze(1).to(z.dtype)
        full = z.new_zeros(*z.shape[:2], math.prod(self.shape))
        full[..., : z.shape[-1]] = z
        return self.forward_op.V(full.flatten(0, 1), **physics).reshape(rows, *self.shape)

    def inference(self, observation, num_samples=1, rng=None):
        rng = self.sample_rng(observation, num_samples, rng)
        sched = self.scheduler
        # Start from the scaled prior noise, then work in the unscaled u = x / s.
        x = rng.randn(*self.shape).to(observation.y.device) * sched.sigma_max
        # The reference takes the scaled start as the unscaled state (the same when s = 1).
        u = x if self.compat == "reference" else x / float(sched.scaling_steps[0])
        rows = u.shape[0]
        for i in range(sched.num_steps):
            sigma, sigma_next = float(sched.sigma_steps[i]), float(sched.sigma_steps[i + 1])
            u = u.detach().requires_grad_(True)
            with torch.enable_grad():
                x0 = self.net(u, torch.as_tensor(sigma, device=u.device))
            # Pseudo-inverse guidance, pulled back to u through the network.
            with torch.no_grad():
                pred = self.forward_op.forward(x0.detach(), **observation.physics)
                residual = observation.y.unsqueeze(1) - group_rows(pred, observation.batch)
                vec = self._guidance_vector(residual.flatten(0, 1), observation, sigma, rows)
            (guidance,) = torch.autograd.grad(x0, u, grad_outputs=vec.to(x0.dtype))
            # DDIM step (eta sets the fresh-noise share), then the guidance.
            u, x0 = u.detach(), x0.detach()
            noise = rng.randn_like(u)
            u = (
                x0
                + math.sqrt(1.0 - self.eta**2) * sigma_next / sigma * (u - x0)
                + self.eta * sigma_next * noise
                + guidance
            )
            report(i, sched.num_steps, data_fitting_loss=residual.flatten(2).square().sum(2).sqrt())
        return u.detach()
