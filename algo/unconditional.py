"""Sampling from the prior alone (ignores the observation): a sanity check of prior and sampler."""

from __future__ import annotations

from algo.base import Algo
from utils.diffusion import sample
from utils.scheduler import Scheduler


class UnconditionalDiffusionSampler(Algo):
    """Euler/Heun integration of the reverse SDE or probability-flow ODE (Song et al., 2021;
    Karras et al., 2022) from pure noise. Reference default: VP grid, 1000 steps, SDE."""

    def __init__(
        self, net, forward_op, diffusion_scheduler_config, sde: bool = True, solver: str = "euler"
    ):
        super().__init__(net, forward_op)
        self.scheduler = Scheduler(**diffusion_scheduler_config)
        self.sde = bool(sde)
        self.solver = solver

    def inference(self, observation, num_samples=1, rng=None):
        rng = self.sample_rng(observation, num_samples, rng)
        x = rng.randn(*self.shape).to(observation.y.device) * self.scheduler.sigma_max
        return sample(self.net, x, self.scheduler, solver=self.solver, sde=self.sde, rng=rng)
