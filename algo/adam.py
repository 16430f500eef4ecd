"""Plain data-fit optimization with Adam(W): the reference's FWI baseline (``AdamL2``).

Minimizes ||A(x) - y||^2 over the normalized model x with AdamW (Loshchilov and Hutter,
"Decoupled weight decay regularization", ICLR 2019) and a step-decay schedule, one operator
gradient per step, no prior. FWI starts it from a Gaussian-smoothed truth, as the reference's
experiments do (``init='blurred_target'``: an oracle start, the usual practice of the FWI
literature, where a smooth background model is assumed known); ``init='constant'`` starts from a
constant model, which cycle-skips on FWI -- the reason for the oracle start. The optional box
``bounds`` (normalized units) is applied after every step. Rows are independent (AdamW acts
elementwise), every sample of an item is the same estimate.
"""

from __future__ import annotations

import torch

from algo.data_fit import DataFitBaseline
from utils.progress import report


class AdamL2(DataFitBaseline):
    def __init__(
        self,
        net,
        forward_op,
        num_steps: int = 500,
        lr: float = 0.5,
        weight_decay: float = 0.0,
        milestones=(),
        gamma: float = 0.5,
        init: str = "blurred_target",
        init_sigma: float = 20.0,
        init_value: float = 0.0,
        bounds=None,
    ):
        super().__init__(net, forward_op, init, init_sigma, init_value, bounds)
        self.num_steps = int(num_steps)
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.milestones, self.gamma = [int(m) for m in (milestones or [])], float(gamma)

    def inference(self, observation, num_samples=1, rng=None, target=None):
        x = self.start(observation, target).requires_grad_(True)
        opt = torch.optim.AdamW([x], lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, self.milestones, self.gamma)
        for step in range(self.num_steps):
            grad, loss = self.forward_op.gradient(x.detach(), observation, return_loss=True)
            x.grad = grad.to(x.dtype)
            report(step, self.num_steps, data_fitting_loss=loss.sqrt())
            opt.step()
            sched.step()
            self.project_(x)
        return x.detach().repeat_interleave(num_samples, dim=0)
