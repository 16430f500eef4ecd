"""Building a prior from the ``pretrain`` config and, when the problem names one, a checkpoint.

Checkpoints are ``torch.save`` dictionaries with state dicts under ``ema`` (preferred) or ``net``
(what train.py writes, and the reference's released weights), read with ``weights_only=True``.
Legacy pickles that embed code are refused unless ``allow_pickle=true``.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

RELEASE = "the GitHub release 'diffusion-prior' of devzhk/InverseBench"
PRETRAIN_DIR = Path(__file__).resolve().parents[1] / "configs" / "pretrain"


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its class name (some have no message)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def file_problem(path) -> str | None:
    """What is wrong with a file that should be a ``torch.save`` archive, read without unpickling
    anything: empty, or neither a zip archive (torch >= 1.6) nor a legacy pickle; None if it
    looks like one (torch.load still checks the rest)."""
    size = Path(path).stat().st_size
    if size == 0:
        return "is empty (0 bytes): an interrupted download or copy"
    if zipfile.is_zipfile(path):
        return None
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK":
        return f"is a truncated or damaged zip archive ({size} bytes)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return None  # a pickle (protocol 2-5): torch's legacy format, or a pickled module
    return f"is not a torch checkpoint ({size} bytes, neither a zip archive nor a pickle)"


def load_state_dict(path, allow_pickle: bool = False) -> dict:
    """State dict from a checkpoint: under ``ema`` (preferred), ``net``, or bare."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"prior checkpoint not found: {path} (set by problem.prior). Released InverseBench "
            f"weights come from {RELEASE}; small priors ship in checkpoints/ or can be trained "
            "with train.py. Point problem.prior=<path> at the file."
        )
    problem = file_problem(path)
    if problem:
        raise ValueError(f"{path} {problem}; download or train it again (problem.prior=<path>)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} is a legacy pickle that embeds code (e.g. a pickled nn.Module): loading it "
            "runs that code, so it is refused by default. If you trust the file, rerun with "
            f"allow_pickle=true. ({err.__class__.__name__}: {first_line(err)})"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise ValueError(
            f"{path} is corrupt or truncated and cannot be read as a torch checkpoint "
            f"({first_line(err)}). Download or train it again."
        ) from err
    if isinstance(ckpt, dict):
        for key in ("ema", "net"):
            if key in ckpt:
                ckpt = ckpt[key]
                break
    if isinstance(ckpt, torch.nn.Module):  # legacy pickle of the module itself
        ckpt = ckpt.state_dict()
    if not isinstance(ckpt, dict) or not all(torch.is_tensor(v) for v in ckpt.values()):
        raise ValueError(f"{path} holds no state dict (expected tensors under 'ema' or 'net')")
    return ckpt


def _shapes(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}


def _config_shapes(node) -> dict | None:
    """Key -> shape of the network a config builds: on the meta device when the network allows
    it (no memory, no initialisation), else on the CPU; None when it cannot be built here."""
    for device in ("meta", "cpu"):
        try:
            with torch.device(device), torch.no_grad():
                return _shapes(instantiate(node).state_dict())
        except Exception:
            continue
    return None


def matching_pretrain(state: dict) -> list[str]:
    """Names of the pretrain configs whose model has exactly this checkpoint's keys and shapes."""
    want = _shapes(state)
    names = []
    for path in sorted(PRETRAIN_DIR.glob("*.yaml")):
        node = OmegaConf.load(path).get("model")
        if node is None or "_target_" not in node or "${" in OmegaConf.to_yaml(node):
            continue
        shapes = _config_shapes(node)
        if shapes == want:
            names.append(path.stem)
    return names


def load_weights(net: torch.nn.Module, path, allow_pickle: bool = False) -> None:
    """Load a checkpoint into ``net`` strictly; on a mismatch, say which ``pretrain=`` fits."""
    state = load_state_dict(path, allow_pickle)
    if _shapes(state) == _shapes(net.state_dict()):
        net.load_state_dict(state, strict=True)
        return
    fits = matching_pretrain(state)
    hint = (
        f"It matches pretrain={' or pretrain='.join(fits)}: rerun with that."
        if fits
        else "No pretrain config matches it: check that the file is the prior of "
        "this problem, or write a pretrain config for its architecture."
    )
    raise ValueError(
        f"checkpoint {path} does not fit the prior built from the pretrain config "
        f"({type(net).__name__}, {len(net.state_dict())} tensors vs {len(state)} in the file). "
        + hint
    )


class NoPrior(torch.nn.Module):
    """Stands in for the prior of a prior-free method (RML, FISTA-TV, CS-MRI, data-fit
    baselines): it has the image shape the method needs and refuses to be evaluated."""

    def __init__(self, img_channels: int, img_resolution: int):
        super().__init__()
        self.img_channels, self.img_resolution = int(img_channels), int(img_resolution)
        self.shape = (self.img_channels, self.img_resolution, self.img_resolution)
        self.sigma_min, self.sigma_max = 0.0, float("inf")

    def forward(self, *args, **kwargs):
        raise RuntimeError("this method declared uses_prior = False but evaluated the prior")


def shape_only(model_config) -> NoPrior:
    """The image shape of a ``pretrain.model`` config, without building or loading the network."""
    cfg = OmegaConf.to_container(model_config, resolve=True)
    if "img_channels" in cfg and "img_resolution" in cfg:
        return NoPrior(cfg["img_channels"], cfg["img_resolution"])
    net = instantiate(model_config)  # analytic priors: cheap, and they know their shape
    return NoPrior(net.shape[0], net.shape[-1])


def build_prior(model_config, prior_path=None, device="cpu", allow_pickle: bool = False):
    """Instantiate the prior network; load weights from ``prior_path`` when given."""
    net = instantiate(model_config)
    trainable = any(True for _ in net.parameters())
    if prior_path:
        load_weights(net, prior_path, allow_pickle)
    elif trainable:
        raise ValueError(
            f"the prior {type(net).__name__} has weights but problem.prior names no checkpoint; "
            "set problem.prior=<path to a .pt file>"
        )
    return net.to(device).eval().requires_grad_(False)
