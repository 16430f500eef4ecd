"""Classical compressed-sensing MRI with SigPy (Lustig, Donoho and Pauly, "Sparse MRI: The
application of compressed sensing for rapid MR imaging", MRM 2007; SigPy: Ong and Lustig, ISMRM
2019): the reference's ``cs_mri`` baseline, no diffusion prior.

Per item, one SigPy app on the item's own coil maps and mask (read from the observation):

* ``Sense``: min_x ||M F S x - y||^2 / 2 + lamda ||x||^2 / 2 (``sigpy.mri.app.SenseRecon``);
* ``L1Wavelet``: ... + lamda ||Psi x||_1, Psi a Daubechies-4 wavelet (``L1WaveletRecon``);
* ``TV``: ... + lamda TV(x) (``TotalVariationRecon``).

SigPy's centered orthonormal FFT is the operator's ``fft2c`` (checked in the tests), so the
problem solved is exactly the operator's. SigPy applies the model itself, so the harness counts
no operator calls for this algorithm; ``max_iter`` bounds its iterations. Every sample of an item
is the same estimate.
"""

from __future__ import annotations

import numpy as np
import torch

from algo.base import Algo

MODES = ("Sense", "L1Wavelet", "TV")


class CompressedSensingMRI(Algo):
    requires = frozenset()
    uses_prior = False  # runs without a checkpoint (main.py gives it the image shape only)

    def __init__(self, net, forward_op, mode: str = "L1Wavelet", lamda: float = 1e-6, max_iter=100):
        super().__init__(net, forward_op)
        inner = getattr(forward_op, "inner", forward_op)
        keys = set(getattr(inner, "physics_keys", ()))
        if not {"maps", "mask"} <= keys:
            raise ValueError(
                "cs_mri needs a multi-coil MRI operator (coil maps and a mask per item, e.g. "
                f"problem=multi-coil-mri-small); {type(inner).__name__} has physics "
                f"{sorted(keys) or 'none'}"
            )
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode, self.lamda, self.max_iter = mode, float(lamda), int(max_iter)

    def inference(self, observation, num_samples=1, rng=None):
        import sigpy.mri.app as app

        phys = observation.physics
        recon = {
            "Sense": app.SenseRecon,
            "L1Wavelet": app.L1WaveletRecon,
            "TV": app.TotalVariationRecon,
        }
        out = []
        for b in range(observation.batch):
            y = torch.view_as_complex(observation.y[b].to(torch.float64).contiguous()).cpu().numpy()
            maps = phys["maps"][b].to(torch.complex128).cpu().numpy()
            mask = phys["mask"][b].cpu().numpy().astype(np.float64)
            weights = np.broadcast_to(mask, y.shape[-2:]).copy()
            x = recon[self.mode](
                y, maps, self.lamda, weights=weights, max_iter=self.max_iter, show_pbar=False
            ).run()
            x = torch.from_numpy(np.asarray(x))
            out.append(torch.stack([x.real, x.imag]).float())
        return torch.stack(out).to(observation.y.device).repeat_interleave(num_samples, 0)
