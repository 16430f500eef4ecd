"""The forward model as a black box: what a derivative-free method may ask of an operator.

``BlackBox(op)`` offers the forward model G and the data misfit (``forward``, ``loss``,
``loss_m``), the noise model (``noise_std``), simulation and units; nothing else. Asking it for a
derivative of the forward model (``gradient``) or for the operator's own measurement-space
gradient (``gradient_m``), or for any linear-algebra piece (``adjoint``, SVD factors, ...), raises
``NotBlackBoxError``. It declares no capabilities, so an algorithm that needs one is refused when
it is built.

``loss_m`` is the misfit as a function of measurements: a method may differentiate it (EnKG's
residual 2 (G(x) - y)) without differentiating the forward model.

Used by ``main.py black_box=true`` and the derivative-free benchmark and tests.
"""

from __future__ import annotations


class NotBlackBoxError(RuntimeError):
    """An algorithm asked a black-box operator for more than forward evaluations."""


class BlackBox:
    capabilities = frozenset()

    #: Attributes passed through to the wrapped operator (data and units, no derivatives).
    ALLOWED = frozenset(
        {
            "physics_keys",
            "sigma_noise",
            "unnorm_shift",
            "unnorm_scale",
            "device",
            "complex_measurements",
            "noise_std",
            "unnormalize",
            "normalize",
            "close",
        }
    )

    def __init__(self, inner):
        self.inner = inner

    def forward(self, x, **physics):
        return self.inner.forward(x, **physics)

    def loss(self, x, observation):
        return self.inner.loss(x, observation)

    def loss_m(self, measurements, observation):
        return self.inner.loss_m(measurements, observation)

    def __call__(self, data, rng):
        return self.inner(data, rng)

    def gradient(self, *args, **kwargs):
        raise NotBlackBoxError("a derivative-free method asked for the forward model's gradient")

    def gradient_m(self, *args, **kwargs):
        raise NotBlackBoxError(
            "a derivative-free method asked the operator for gradient_m "
            "(differentiate loss_m instead, which needs nothing of the forward model)"
        )

    def __getattr__(self, name):
        if name in self.ALLOWED:
            return getattr(self.inner, name)
        raise NotBlackBoxError(f"a black-box operator offers no {name!r}")
