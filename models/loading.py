"""Building a prior from the ``pretrain`` config and, when the problem names one, a checkpoint."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from hydra.utils import instantiate


def load_state_dict(path) -> dict:
    """State dict from a ``torch.save`` checkpoint: under ``ema`` (preferred), ``net``, or bare."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"prior checkpoint not found: {path} (set by problem.prior). Released InverseBench "
            "weights come from the GitHub release 'diffusion-prior' of devzhk/InverseBench; "
            "small priors ship in checkpoints/ or can be trained with train.py. Point "
            "problem.prior=<path> at the file."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} is not a plain state-dict checkpoint (it embeds pickled code, which can run "
            f"arbitrary code when loaded): {err}"
        ) from err
    if isinstance(ckpt, dict):
        for key in ("ema", "net"):
            if key in ckpt:
                return ckpt[key]
    return ckpt


def build_prior(model_config, prior_path=None, device="cpu"):
    """Instantiate the prior network; load weights from ``prior_path`` when given."""
    net = instantiate(model_config)
    trainable = any(True for _ in net.parameters())
    if prior_path:
        net.load_state_dict(load_state_dict(prior_path), strict=True)
    elif trainable:
        raise ValueError(
            f"the prior {type(net).__name__} has weights but problem.prior names no checkpoint; "
            "set problem.prior=<path to a .pt file>"
        )
    return net.to(device).eval().requires_grad_(False)
