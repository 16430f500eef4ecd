"""The forward-operator contract.

Operators act on *normalized* x of shape (R, C, H, W) -- what the prior sees. An observation holds
B test items: their measurements ``y`` (B, ...) and per-item physics (coil maps, masks, random
matrices...) under ``physics`` (each tensor batch-first, B rows). The rows of x are grouped
item-major: R = B * n, rows i*n ... i*n+n-1 belong to item i (its samples or particles). Operators
broadcast each item's measurement and physics over its rows, so algorithms never copy them.

Operators keep no per-call state; everything per item travels in the ``Observation``.

Capabilities are declared, not guessed: ``capabilities`` lists what an operator offers beyond
``forward`` and ``loss`` -- ``gradient`` (autograd or adjoint-state), ``linear``, ``adjoint``,
``svd`` (U, S, Vt, V, Ut, M), ``pseudo_inverse``. Algorithms state what they need.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch

from utils.compat import check_compat
from utils.observation import Observation
from utils.rng import BatchRNG

CAPABILITIES = ("gradient", "linear", "adjoint", "svd", "pseudo_inverse")


def rows_per_item(x: torch.Tensor, batch: int) -> int:
    if x.shape[0] % batch:
        raise ValueError(
            f"x has {x.shape[0]} rows, not a multiple of the observation's {batch} items; "
            "rows must be grouped item-major (item i owns rows i*n ... i*n+n-1)"
        )
    return x.shape[0] // batch


def group_rows(x: torch.Tensor, batch: int) -> torch.Tensor:
    """View item-major rows (B*n, ...) as (B, n, ...)."""
    return x.reshape(batch, rows_per_item(x, batch), *x.shape[1:])


class BaseOperator(ABC):
    """Forward model y = A(x) + noise on normalized x.

    ``unnormalize(x) = (x + unnorm_shift) * unnorm_scale`` maps to physical units.
    Subclasses implement ``forward(x, **physics)`` and list the per-item physics keys they read from
    a data item in ``physics_keys``. ``forward`` receives physics per item (B, ...) and x with
    R = B * n item-major rows (``group_rows`` views x as (B, n, ...)), so per-item tensors are
    never copied n times.
    """

    physics_keys: tuple[str, ...] = ()
    capabilities: frozenset[str] = frozenset({"gradient"})

    def __init__(
        self,
        sigma_noise: float = 0.0,
        unnorm_shift: float = 0.0,
        unnorm_scale: float = 1.0,
        device="cpu",
        compat: str = "corrected",
    ):
        """``compat``: ``reference`` (InverseBench's numbers) or ``corrected`` (utils/compat.py,
        docs/deviations.md); operators that differ between the two read ``self.compat``."""
        self.compat = check_compat(compat, f"{type(self).__name__} compat")
        self.sigma_noise = float(sigma_noise)
        self.unnorm_shift = float(unnorm_shift)
        self.unnorm_scale = float(unnorm_scale)
        self.device = torch.device(device)
        unknown = set(self.capabilities) - set(CAPABILITIES)
        if unknown:
            raise ValueError(f"{type(self).__name__} declares unknown capabilities {unknown}")

    @classmethod
    def capabilities_for(cls, model_config) -> frozenset[str]:
        """Capabilities an operator built from ``model_config`` offers, without building it.
        Operators whose capabilities depend on their arguments (a property) override this."""
        declared = cls.capabilities
        return frozenset(declared) if isinstance(declared, (set, frozenset)) else frozenset()

    # -- physics ---------------------------------------------------------------------------------
    @abstractmethod
    def forward(self, x: torch.Tensor, **physics: torch.Tensor) -> torch.Tensor:
        """Noise-free measurements of normalized x, one per row."""

    #: Measurements are complex numbers stored as real pairs: ``sigma_noise`` is the std of the
    #: complex noise CN(0, sigma^2), so each real part gets sigma / sqrt(2).
    complex_measurements: bool = False

    def noise_std(self, physics: Mapping[str, torch.Tensor], batch: int) -> torch.Tensor:
        """Per-item noise standard deviation of one real measurement entry (B,); a
        ``sigma_noise`` physics entry overrides."""
        if "sigma_noise" in physics:
            return physics["sigma_noise"].reshape(batch)
        sigma = self.sigma_noise / (2**0.5 if self.complex_measurements else 1.0)
        return torch.full((batch,), sigma, device=self.device, dtype=torch.float64)

    def __call__(self, data: Mapping[str, torch.Tensor], rng: BatchRNG) -> Observation:
        """Simulate noisy measurements of ``data['target']`` (normalized), one stream per item."""
        physics = {k: data[k].to(self.device) for k in self.physics_keys}
        x = data["target"].to(self.device)
        with torch.no_grad():
            y = self.forward(x, **physics)
        std = self.noise_std(physics, x.shape[0]).to(y.device)
        if torch.any(std > 0):
            noise = rng.randn_like(y).to(y.device)
            y = y + std.reshape(-1, *[1] * (y.dim() - 1)).to(y.real.dtype) * noise
        return Observation(y, physics)

    def observe(self, data: Mapping[str, torch.Tensor]) -> Observation:
        """Measured data as an ``Observation``: a dataset of observations (no ``target``) gives
        ``observation`` (B, ...) in this operator's measurement layout plus the per-item physics.
        Operators whose measurements need preparation (closure quantities, coil maps) override
        this."""
        if "observation" not in data:
            raise ValueError(
                f"{type(self).__name__}: a data item without 'target' must hold 'observation' "
                "(measured data); this dataset has neither"
            )
        physics = {k: data[k].to(self.device) for k in self.physics_keys if k in data}
        missing = [k for k in self.physics_keys if k not in data and k != "sigma_noise"]
        if missing:
            raise ValueError(f"{type(self).__name__}: observed items lack the physics {missing}")
        return Observation(data["observation"].to(self.device), physics)

    # -- data fit --------------------------------------------------------------------------------
    def loss_m(self, measurements: torch.Tensor, observation: Observation) -> torch.Tensor:
        """Squared misfit ||A(x) - y||^2 per row, from measurements A(x) (rows, ...)."""
        diff = group_rows(measurements, observation.batch) - observation.y.unsqueeze(1)
        return diff.abs().square().flatten(2).sum(2).flatten()

    def loss(self, x: torch.Tensor, observation: Observation) -> torch.Tensor:
        """Squared misfit per row of x; shape (rows,)."""
        rows_per_item(x, observation.batch)
        return self.loss_m(self.forward(x, **observation.physics), observation)

    def gradient(self, x: torch.Tensor, observation: Observation, return_loss: bool = False):
        """d loss / d x per row (rows are independent), by autograd through ``loss``."""
        if "gradient" not in self.capabilities:
            raise NotImplementedError(f"{type(self).__name__} offers no gradient")
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            loss = self.loss(x, observation)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        return (grad, loss.detach()) if return_loss else grad

    def adjoint_gradient(self, x: torch.Tensor, observation: Observation, return_loss=False):
        """2 A^T (A(x) - y) per row from ``forward`` and ``adjoint`` (the adjoint of forward's
        linear part), in x's dtype: the gradient of linear operators without an autograd graph.
        Such operators set ``gradient = BaseOperator.adjoint_gradient``; their ``forward`` must
        return a fresh tensor (the residual is formed in it, in place)."""
        pred = self.forward(x, **observation.physics)  # a fresh tensor: the residual in place
        y = observation.y.to(pred.dtype)  # same dtype: a mixed in-place subtraction is slow
        residual = group_rows(pred, observation.batch).sub_(y.unsqueeze(1))
        residual = residual.flatten(0, 1)
        grad = 2.0 * self.adjoint(residual, **observation.physics)
        grad = grad.reshape(x.shape).to(x.dtype)
        return (grad, residual.square().flatten(1).sum(1)) if return_loss else grad

    def gradient_m(self, measurements: torch.Tensor, observation: Observation) -> torch.Tensor:
        """d loss_m / d measurements per row."""
        with torch.enable_grad():
            m = measurements.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.loss_m(m, observation).sum(), m)
        return grad

    # -- units -----------------------------------------------------------------------------------
    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.unnorm_shift) * self.unnorm_scale

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.unnorm_scale - self.unnorm_shift

    def close(self) -> None:
        """Release external resources (clusters, files); nothing by default."""
        return None


class MissingCapability(ValueError):
    """An algorithm needs operator capabilities the operator lacks (``needed``, ``missing``)."""

    def __init__(self, message: str, needed, missing):
        super().__init__(message)
        self.needed, self.missing = frozenset(needed), list(missing)


def require_capabilities(needed, forward_op, who: str) -> None:
    """Fail early, with a useful message, when ``forward_op`` lacks what ``who`` needs (main.py
    adds the problems that offer it)."""
    caps = set(getattr(forward_op, "capabilities", ()))
    missing = sorted(set(needed) - caps)
    if missing:
        name = type(getattr(forward_op, "inner", forward_op)).__name__
        raise MissingCapability(
            f"{who} needs operator capabilities {missing}, which {name} does not offer "
            f"(it offers {sorted(caps) or 'none'}). Pick an algorithm whose needs fit this "
            "problem, or a problem that offers them.",
            needed,
            missing,
        )
