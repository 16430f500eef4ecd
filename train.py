"""Train a diffusion prior (configs/pretrain/<name>.yaml: data, model, loss, train, log).

    python train.py -cn <name> [key=value ...]
    accelerate launch --multi_gpu --num_processes N train.py -cn <name>
    (add train.cpu=true to train on CPU processes)

Adam with linear warmup, optional gradient clipping, EMA with EDM's half-life rule, exactly
``train.num_steps`` optimizer steps, atomic checkpoints
``<exp_dir>/<exp_name>/ckpts/ckpt_<step>.pt`` holding ``net``, ``ema``, ``optimizer``,
``scheduler`` and ``step``, and automatic resume from the latest one. Data order and noise are
functions of (seed, step, rank), so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from models.loading import file_problem, first_line
from utils.io import atomic_torch_save, atomic_write_json, atomic_write_text
from utils.paths import CONFIG_DIR
from utils.rng import derive_seed


class StepBatchSampler(Sampler):
    """Per-process index batches for steps start, start+1, ...: the global batch of step s is the
    s-th chunk of epoch permutations seeded by (seed, epoch); process r takes its slice."""

    def __init__(
        self,
        n: int,
        global_batch: int,
        rank: int,
        world: int,
        seed: int,
        start: int,
        num_steps: int,
    ):
        if global_batch > n:
            raise ValueError(f"batch_size {global_batch} exceeds the dataset's {n} items")
        self.n, self.batch, self.rank, self.world = n, global_batch, rank, world
        self.seed, self.start, self.num_steps = seed, start, num_steps
        self.per_epoch = n // global_batch  # drop_last

    def __len__(self) -> int:
        return max(self.num_steps - self.start, 0)

    def __iter__(self):
        per_proc = self.batch // self.world
        for step in range(self.start, self.num_steps):
            epoch, k = divmod(step, self.per_epoch)
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            perm = torch.randperm(self.n, generator=g)
            chunk = perm[k * self.batch : (k + 1) * self.batch]
            yield chunk[self.rank * per_proc : (self.rank + 1) * per_proc].tolist()


def images_of(batch) -> torch.Tensor:
    """Datasets may return tensors or dicts holding ``target`` (the reference crashes on dicts)."""
    if isinstance(batch, dict):
        return batch["target"]
    if isinstance(batch, (list, tuple)):
        return batch[0]
    return torch.as_tensor(batch)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = [
        (int(m.group(1)), p)
        for p in ckpt_dir.glob("ckpt_*.pt")
        if (m := re.fullmatch(r"ckpt_(\d+)\.pt", p.name))
    ]
    return max(found)[1] if found else None


CHECKPOINT_KEYS = ("net", "ema", "optimizer", "scheduler", "step")
# Keys that may change between a run and its resume: how long, how often, where to log.
RESUMABLE_CHANGES = {
    *("train.num_steps", "train.resume", "train.num_workers", "train.compile"),
    *("log.log_every", "log.save_every", "log.wandb", "log.project", "log.group"),
}


def read_checkpoint(path: Path):
    """A training checkpoint's state, or a string saying what is wrong with the file."""
    problem = file_problem(path)
    if problem:
        return problem
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt archive, truncated tensor data, ...
        return f"cannot be read ({first_line(err)})"
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    return f"has no {missing}" if missing else state


def newest_intact_checkpoint(ckpt_dir: Path, say=print):
    """``(state, path)`` of the newest readable checkpoint in ``ckpt_dir`` (``(None, None)`` when
    there is none); a damaged newer one (a run killed during a copy, a full disk) is reported
    and skipped, never silently."""
    found = sorted(
        ((int(m.group(1)), p) for p in ckpt_dir.glob("ckpt_*.pt")
         if (m := re.fullmatch(r"ckpt_(\d+)\.pt", p.name))),
        reverse=True,
    )  # fmt: skip
    for _, path in found:
        state = read_checkpoint(path)
        if not isinstance(state, str):
            return state, path
        say(f"WARNING: {path} {state}; falling back to the previous checkpoint")
    return None, None


def check_train_keys(cfg) -> None:
    tcfg = cfg.train
    for key in ("num_steps", "batch_size"):
        value = tcfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"train.{key}={value!r} must be a whole number >= 1")
    lr = tcfg.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise ValueError(f"train.lr={lr!r} must be a positive number")
    for key in ("log_every", "save_every"):
        value = cfg.log.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"log.{key}={value!r} must be a whole number >= 1")


def check_same_training(exp_dir: Path, cfg) -> None:
    """A resume continues the same training: settings other than ``RESUMABLE_CHANGES`` (learning
    rate, batch size, data, model, loss, seed, ...) must equal the saved config.yaml's."""
    saved = exp_dir / "config.yaml"
    if not saved.is_file():
        return
    old = _flat(OmegaConf.to_container(OmegaConf.load(saved), resolve=True))
    new = _flat(OmegaConf.to_container(cfg, resolve=True))
    changed = sorted(k for k in set(old) | set(new)
                     if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)  # fmt: skip
    if changed:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:6])
        raise ValueError(
            f"{exp_dir} holds a training run with other settings ({shown}); resuming would mix "
            "them. Use another log.exp_name=..., or train.resume=never to start over there"
        )


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, beta: float) -> None:
    for pe, pn in zip(ema.parameters(), net.parameters(), strict=True):
        pe.lerp_(pn.detach(), 1 - beta)
    for be, bn in zip(ema.buffers(), net.buffers(), strict=True):
        be.copy_(bn)


def ema_beta(step: int, batch: int, halflife_nimg: float, rampup_ratio: float | None) -> float:
    """EDM's rule: the EMA half-life in images, ramped up to ``rampup_ratio`` x images seen."""
    halflife = halflife_nimg
    if rampup_ratio is not None:
        halflife = min(halflife, step * batch * rampup_ratio)
    return 0.5 ** (batch / max(halflife, 1e-8))


def train(cfg: DictConfig) -> dict:
    from accelerate import Accelerator

    tcfg, lcfg = cfg.train, cfg.log
    acc = Accelerator(
        cpu=bool(tcfg.get("cpu", False)), log_with="wandb" if lcfg.get("wandb", False) else None
    )
    if tcfg.get("tf32", False):
        torch.set_float32_matmul_precision("high")
    seed = int(tcfg.get("seed", 0))
    check_train_keys(cfg)
    exp_dir = Path(lcfg.exp_dir) / lcfg.exp_name
    ckpt_dir = exp_dir / "ckpts"
    resume = tcfg.get("resume", "auto")
    if resume not in ("auto", None, "None", "never"):
        check_same_training(exp_dir, cfg)
    elif resume != "never" and latest_checkpoint(ckpt_dir) is not None:
        check_same_training(exp_dir, cfg)
    batch = int(tcfg.batch_size)
    if batch % acc.num_processes:
        raise ValueError(f"train.batch_size={batch} must divide over {acc.num_processes} processes")

    torch.manual_seed(seed)  # identical initial weights on every process
    dataset = instantiate(cfg.data)
    net = instantiate(cfg.model)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=float(tcfg.lr))
    warmup = max(int(tcfg.get("warmup_steps", 0)), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(s, warmup) / warmup)
    loss_fn = instantiate(cfg.loss)

    step = 0
    if resume in ("auto", None, "None"):
        state, path = newest_intact_checkpoint(ckpt_dir, acc.print)
    elif resume != "never":
        path = Path(resume)
        state = read_checkpoint(path)
        if isinstance(state, str):
            raise ValueError(f"train.resume={path}: {state}")
    else:
        state = path = None
    if state is not None:
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = int(state["step"])
        acc.print(f"resumed from {path} at step {step}")
    if acc.is_main_process:  # only now: a refused resume leaves the old record as it was
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(exp_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    num_steps = int(tcfg.num_steps)
    sampler = StepBatchSampler(
        len(dataset), batch, acc.process_index, acc.num_processes, seed, step, num_steps
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=int(tcfg.get("num_workers", 0)),
        pin_memory=acc.device.type == "cuda",
    )
    if tcfg.get("compile", False):
        net = torch.compile(net)  # checkpoints still hold the plain module's state dict
    net, opt, sched = acc.prepare(net, opt, sched)

    def plain(module):
        return acc.unwrap_model(module, keep_torch_compile=False)

    ema.to(acc.device)
    if lcfg.get("wandb", False):
        acc.init_trackers(
            lcfg.get("project", "inversebench-pretrain"),
            config=OmegaConf.to_container(cfg, resolve=True),
            init_kwargs={"wandb": {"group": lcfg.get("group"), "name": lcfg.exp_name}},
        )

    grad_clip = float(tcfg.get("grad_clip", 0.0))
    halflife = float(tcfg.get("ema_halflife_nimg", 500_000))
    rampup = tcfg.get("ema_rampup_ratio", 0.05)
    log_every, save_every = int(lcfg.get("log_every", 100)), int(lcfg.get("save_every", 5000))
    gen = torch.Generator(device=acc.device)
    history = []
    bar = tqdm(total=num_steps, initial=step, disable=not acc.is_main_process, desc="train")
    tic, seen = time.perf_counter(), 0

    def save() -> None:
        if acc.is_main_process:
            atomic_torch_save(
                {
                    "net": plain(net).state_dict(),
                    "ema": ema.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "step": step,
                },
                ckpt_dir / f"ckpt_{step}.pt",
            )

    for idx in loader:
        images = images_of(idx).to(acc.device, torch.float32)
        gen.manual_seed(derive_seed(seed, step, acc.process_index))
        loss = loss_fn(net, images, generator=gen).mean()
        acc.backward(loss)
        if grad_clip > 0 and acc.sync_gradients:
            acc.clip_grad_norm_(net.parameters(), grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        update_ema(ema, plain(net), ema_beta(step, batch, halflife, rampup))
        seen += images.shape[0] * acc.num_processes
        mean_loss = float(acc.reduce(loss.detach(), reduction="mean"))
        history.append(mean_loss)
        bar.update(1)
        if step % log_every == 0 or step == num_steps:
            rate = seen / (time.perf_counter() - tic)
            bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:.1f}")
            acc.log({"loss": mean_loss, "images_per_s": rate}, step=step)
        if step % save_every == 0 or step == num_steps:
            save()
    bar.close()
    elapsed = time.perf_counter() - tic

    # Every process reports a checksum of its weights: data parallelism must keep them equal.
    flat = torch.cat([p.detach().double().flatten() for p in plain(net).parameters()])
    checksum = torch.stack(
        [flat.sum(), (flat * torch.arange(len(flat), device=flat.device).double().sin()).sum()]
    )
    sums = acc.gather(checksum.reshape(1, 2)).cpu().tolist()
    summary = {
        "step": step,
        "losses": history,
        "seconds": elapsed,
        "images_per_s": seen / elapsed if elapsed > 0 else None,
        "processes": acc.num_processes,
        "rank_checksums": sums,
        "main_process": acc.is_main_process,
    }
    if acc.is_main_process and history:
        atomic_write_json(exp_dir / "train_summary.json", summary)
    acc.end_training()
    return summary


@hydra.main(
    version_base="1.3", config_path=str(CONFIG_DIR / "pretrain"), config_name="navier-stokes"
)
def main(cfg: DictConfig) -> None:
    summary = train(cfg)
    if summary["losses"] and summary["main_process"]:
        print(json.dumps({k: v for k, v in summary.items() if k != "losses"}))


if __name__ == "__main__":
    main()
