"""Score-based diffusion for accelerated MRI (Chung and Ye, "Score-based diffusion models for
accelerated MRI", Medical Image Analysis 80, 2022): predictor-corrector sampling of the reverse
SDE with a data-consistency step after the predictor and after every corrector step; the
reference's ``score_mri`` baseline (VP, 2000 steps: 4000 network evaluations and 4000 operator
gradients per sample).

Each step i, in the scaled state x = s (x_0 + sigma eps) of the ``Scheduler`` grid:

1. predictor: one Euler-Maruyama step of the reverse SDE (``utils.diffusion.euler_step``);
2. data consistency on the unscaled image u = x / s:  u <- u - (lamb / 2) grad ||A u - y||^2
   = u + lamb A^H (y - A u), then x = s u;
3. ``correct_steps`` times: a Langevin corrector at grid point i + 1 with the step
   eps = 2 (r ||z|| / ||score||)^2 per sample (Song et al., ICLR 2021, Algorithm 5; r = ``lr``, the
   signal-to-noise ratio), x <- x + eps score + sqrt(2 eps) z, then data consistency again.

With centered orthonormal FFTs and coil maps normalized to sum_c |S_c|^2 = 1 (ESPIRiT maps inside
the object), A^H A has eigenvalues in [0, 1] and ``lamb = 1`` is the paper's projection: acquired
k-space lines of the coil images are replaced by the measurements. Deviations from the reference
code: the data-consistency step is lamb / 2 times the operator's gradient of the *squared* misfit
(the paper's A^H (y - A u)), applied to the unscaled image, and the corrector step is computed per
sample (the reference's norms run over the whole batch, coupling its samples).
"""

from __future__ import annotations

import torch

from algo.base import Algo, row_norm
from utils.diffusion import denoise_scaled, euler_step
from utils.scheduler import Scheduler


class ScoreMRI(Algo):
    requires = frozenset({"gradient"})

    def __init__(
        self,
        net,
        forward_op,
        scheduler_config,
        correct_steps: int = 1,
        lr: float = 0.16,
        lamb: float = 1.0,
    ):
        super().__init__(net, forward_op)
        if int(correct_steps) < 0:
            raise ValueError(f"correct_steps must be >= 0, got {correct_steps}")
        if float(lr) <= 0:
            raise ValueError(f"lr (the corrector's signal-to-noise ratio) must be > 0, got {lr}")
        self.scheduler = Scheduler(**scheduler_config)
        self.correct_steps = int(correct_steps)
        self.snr = float(lr)
        self.lamb = float(lamb)

    def data_consistency(self, x: torch.Tensor, s: float, observation) -> torch.Tensor:
        u = x / s
        grad = self.forward_op.gradient(u, observation)
        return (u - 0.5 * self.lamb * grad.to(u.dtype)) * s

    def inference(self, observation, num_samples=1, rng=None):
        rng = self.sample_rng(observation, num_samples, rng)
        sched = self.scheduler
        x = rng.randn(*self.shape).to(observation.y.device) * sched.sigma_max
        with torch.no_grad():
            for i in range(sched.num_steps):
                _, score = denoise_scaled(self.net, x, sched, i)
                x = euler_step(x, score, sched, i, True, rng.randn_like(x))
                s = float(sched.scaling_steps[i + 1])
                x = self.data_consistency(x, s, observation)
                if sched.sigma_steps[i + 1] <= 0:
                    continue
                for _ in range(self.correct_steps):
                    _, score = denoise_scaled(self.net, x, sched, i + 1)
                    z = rng.randn_like(x)
                    ratio = row_norm(z) / row_norm(score).clamp_min(1e-30)
                    eps = 2.0 * (self.snr * ratio) ** 2
                    x = x + eps * score + torch.sqrt(2.0 * eps) * z
                    x = self.data_consistency(x, s, observation)
        return x / float(sched.scaling_steps[-1])
