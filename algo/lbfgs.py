"""Plain data-fit optimization with L-BFGS: the reference's second FWI baseline (``LBFGS``).

Minimizes ||A(x) - y||^2 over the normalized model x with limited-memory BFGS (Liu and Nocedal,
"On the limited memory BFGS method for large scale optimization", Math. Program. 45, 1989) and a
strong-Wolfe line search (torch.optim.LBFGS): ``num_steps`` outer steps of at most ``max_iter``
iterations, each function evaluation one operator gradient. Started like ``adam`` (algo/adam.py:
Gaussian-smoothed truth, or a constant). Each item is optimized on its own -- a joint line search
over a batch would couple the items -- and the optional box ``bounds`` is applied after every
outer step. Every sample of an item is the same estimate.
"""

from __future__ import annotations

import torch

from algo.data_fit import DataFitBaseline
from utils.progress import report


class LBFGS(DataFitBaseline):
    def __init__(
        self,
        net,
        forward_op,
        num_steps: int = 100,
        lr: float = 0.5,
        max_iter: int = 20,
        history_size: int = 100,
        line_search_fn: str | None = "strong_wolfe",
        init: str = "blurred_target",
        init_sigma: float = 20.0,
        init_value: float = 0.0,
        bounds=None,
    ):
        super().__init__(net, forward_op, init, init_sigma, init_value, bounds)
        self.num_steps, self.lr, self.max_iter = int(num_steps), float(lr), int(max_iter)
        self.history_size = int(history_size)
        self.line_search_fn = line_search_fn

    def _solve(self, x0, observation):
        x = x0.clone().requires_grad_(True)
        opt = torch.optim.LBFGS(
            [x],
            lr=self.lr,
            max_iter=self.max_iter,
            history_size=self.history_size,
            line_search_fn=self.line_search_fn,
        )

        def closure():
            grad, loss = self.forward_op.gradient(x.detach(), observation, return_loss=True)
            x.grad = grad.to(x.dtype)
            return float(loss.sum())

        for step in range(self.num_steps):
            loss = opt.step(closure)
            report(step, self.num_steps, data_fitting_loss=float(loss) ** 0.5)
            self.project_(x)
        return x.detach()

    def inference(self, observation, num_samples=1, rng=None, target=None):
        x0 = self.start(observation, target)
        out = torch.cat([self._solve(x0[i : i + 1], observation.item(i)) for i in range(len(x0))])
        return out.repeat_interleave(num_samples, dim=0)
