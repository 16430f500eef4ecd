"""Classical ensemble Kalman inversion with perturbed observations (``algorithm=eki_kalman``):
Iglesias, Law and Stuart, "Ensemble Kalman methods for inverse problems", Inverse Problems 29
(2013) 045001. No diffusion prior. This is NOT InverseBench's EKI baseline (that one is
``algorithm=eki``, algo/eki.py: normalised steps without a noise model); it is kept as the textbook
method, which with ``mda=True`` samples the exact posterior of a linear-Gaussian problem.

J particles per item, drawn from ``init`` (a distribution with ``sample(n, generator)``: a
Matérn Gaussian random field by default, or the problem's exact prior). Each of ``num_updates``
iterations applies the perturbed-observation Kalman update

    u_j <- u_j + C^{uG} (C^{GG} + Gamma)^{-1} (y + eta_j - G(u_j)),   eta_j ~ N(0, Gamma),

with the ensemble covariances of u and G(u). It is computed in the J x J form
C^{uG}(C^{GG} + gamma I)^{-1} r = dU (dG^T dG + gamma I)^{-1} dG^T r (push-through identity),
so the cost is linear in the number of measurements and pixels. Gamma = gamma I per item with
gamma = max(sigma_y^2, (noise_floor * rms(y))^2): the measurement noise when there is any, and a
floor relative to the data's scale for noise-free problems (the update needs Gamma > 0).

``mda=True`` inflates Gamma by the number of iterations (ensemble smoother with multiple data
assimilation, Emerick and Reynolds, 2013): for a linear forward model and a Gaussian ``init``
the ensemble then samples the exact posterior as J grows. ``mda=False`` is classical EKI, an
iterative regularization that keeps fitting the data (its ensemble collapses).

The forward model is a black box: only ``forward`` is called, on all particles of all items in
calls of at most ``batch_size`` rows. Returns ``num_samples`` ensemble members per item, or
their mean (``estimate='mean'``). The reference's key ``num_samples`` for the ensemble size is
accepted as an alias of ``num_particles``. The method has no reference counterpart, so ``compat``
changes nothing here (it is accepted so that every algorithm config can pass it).
"""

from __future__ import annotations

import torch

from algo.base import Algo, chunked_items
from inverse_problems.base import group_rows
from utils.compat import check_compat


class KalmanEKI(Algo):
    requires = frozenset()

    def __init__(
        self,
        net,
        forward_op,
        init,
        num_particles: int = 512,
        num_updates: int = 500,
        noise_floor: float = 0.01,
        mda: bool = False,
        batch_size: int | None = 512,
        estimate: str = "members",
        num_samples: int | None = None,
        compat: str = "corrected",
    ):
        super().__init__(net, forward_op)
        self.compat = check_compat(compat, "KalmanEKI compat")
        if num_samples is not None:  # the reference's name of the ensemble size
            num_particles = num_samples
        if estimate not in ("members", "mean"):
            raise ValueError(f"estimate must be 'members' or 'mean', got {estimate!r}")
        self.init = init
        self.num_particles = int(num_particles)
        self.num_updates = int(num_updates)
        self.noise_floor = float(noise_floor)
        self.mda = bool(mda)
        self.batch_size = int(batch_size) if batch_size else None
        self.estimate = estimate

    @property
    def shape(self) -> tuple[int, ...]:
        """The network's image shape, or the initial distribution's when there is no network."""
        if self.net is not None and hasattr(self.net, "shape"):
            return tuple(self.net.shape)
        return tuple(getattr(self.init, "shape", (self.init.dim, 1, 1)))

    def _initial(self, rng, device) -> torch.Tensor:
        """J draws of ``init`` per item, from that item's stream."""
        J = self.num_particles
        draws = [self.init.sample(J, g).reshape(J, *self.shape) for g in rng.generators]
        return torch.cat(draws).to(device=device, dtype=torch.float32)

    def gamma(self, observation) -> torch.Tensor:
        """Per-item observation-noise variance, per real component (B,)."""
        y = observation.y
        yr = torch.view_as_real(y) if y.is_complex() else y
        sigma2 = self.forward_op.noise_std(observation.physics, observation.batch).to(y.device)
        sigma2 = sigma2.double().square() / (2 if y.is_complex() else 1)
        floor = self.noise_floor**2 * yr.flatten(1).double().square().mean(1)  # of the RMS
        return torch.maximum(sigma2, floor)

    def update(self, u, observation, gamma, rng) -> torch.Tensor:
        B = observation.batch
        g = chunked_items(
            lambda part, obs: self.forward_op.forward(part, **obs.physics),
            u,
            observation,
            self.batch_size,
        )
        gr = torch.view_as_real(g) if g.is_complex() else g
        y = observation.y
        yr = torch.view_as_real(y) if y.is_complex() else y
        G = group_rows(gr, B).flatten(2).double()  # (B, J, m)
        U = group_rows(u, B).flatten(2).double()  # (B, J, d)
        J = G.shape[1]
        dG = (G - G.mean(1, keepdim=True)) / (J - 1) ** 0.5
        dU = (U - U.mean(1, keepdim=True)) / (J - 1) ** 0.5
        eta = rng.randn(G.shape[-1], dtype=torch.float64).to(G.device).reshape(B, J, -1)
        r = yr.flatten(1).double().unsqueeze(1) + eta * gamma.sqrt().reshape(B, 1, 1) - G
        K = dG @ dG.transpose(1, 2) + gamma.reshape(B, 1, 1) * torch.eye(
            J, dtype=torch.float64, device=G.device
        )
        coef = torch.linalg.solve(K, dG @ r.transpose(1, 2))  # (B, J, J): column j for particle j
        U = U + (dU.transpose(1, 2) @ coef).transpose(1, 2)
        return U.to(u.dtype).reshape(u.shape)

    def inference(self, observation, num_samples=1, rng=None):
        J = self.num_particles
        if self.estimate == "members" and num_samples > J:
            raise ValueError(
                f"KalmanEKI returns ensemble members: num_samples={num_samples} exceeds "
                f"num_particles={J}; raise algorithm.method.num_particles"
            )
        rng = self.sample_rng(observation, J, rng)
        init_rng, noise_rng = rng.split(2)
        u = self._initial(init_rng, observation.y.device)
        gamma = self.gamma(observation) * (self.num_updates if self.mda else 1)
        with torch.no_grad():
            for _ in range(self.num_updates):
                u = self.update(u, observation, gamma, noise_rng)
        ens = group_rows(u, observation.batch)
        if self.estimate == "mean":
            out = ens.mean(1, keepdim=True).expand(-1, num_samples, *ens.shape[2:])
        else:
            out = ens[:, :num_samples]
        return out.reshape(-1, *u.shape[1:])
