"""Inference: load -> simulate -> solve -> evaluate -> log, over batches of test items.

    python main.py problem=<problem> algorithm=<algorithm> pretrain=<prior> [key=value ...]

Results go to ``<problem.exp_dir>/<algorithm.name>/<exp_name>/``: the resolved ``config.yaml``,
``log.txt``, ``result_<id>.pt`` per item, ``metrics.csv`` (one row per item) and
``summary.json``. Items whose result exists are not recomputed unless ``overwrite=true``;
``inference=false`` only evaluates saved results.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
from pathlib import Path

import hydra
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from inverse_problems.base import MissingCapability
from inverse_problems.black_box import BlackBox
from models.loading import build_prior, shape_only
from utils.compat import check_compat
from utils.compute import CountingNet, CountingOperator, Counts, Stopwatch
from utils.experiment import (
    ExperimentFolder,
    experiment_dir,
    fingerprint,
    parse_shard,
)
from utils.io import atomic_write_csv, atomic_write_json, atomic_write_text
from utils.paths import CONFIG_DIR
from utils.progress import as_float, reporting
from utils.results import (
    COMPUTE_COLUMNS,
    collate,
    load_result,
    remove_result,
    result_config,
    result_fingerprint,
    result_path,
    save_result,
    summarize,
    summary_table,
)
from utils.rng import ALGORITHM, OBSERVATION, BatchRNG
from utils.validate import check_run_keys

log = logging.getLogger("inversebench")


def pick_device(name: str) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} asked for, but CUDA is not available; use device=cpu")
    return device


def setup_logging(exp_dir: Path | None) -> None:
    """Log to stdout and, once the run has a folder, to its log.txt."""
    log.setLevel(logging.INFO)
    log.handlers.clear()
    fmt = logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S")
    handlers = [logging.StreamHandler(sys.stdout)]
    if exp_dir is not None:
        handlers.insert(0, logging.FileHandler(exp_dir / "log.txt"))
    for handler in handlers:
        handler.setFormatter(fmt)
        log.addHandler(handler)
    log.propagate = False


def init_wandb(config: DictConfig) -> DictConfig:
    """Start a wandb run; a sweep agent's sampled values (dotted keys) override the config."""
    import wandb

    wandb.init(
        project=config.problem.name,
        group=config.algorithm.name,
        config=OmegaConf.to_container(config, resolve=True),
        reinit="finish_previous",
    )
    for key, value in dict(wandb.config).items():
        if "." in key:
            OmegaConf.update(config, key, value, merge=False)
    return config


def make(node, **kwargs):
    """``instantiate``, with the object's own error (a ValueError naming the bad key or file)
    raised as it is instead of wrapped in Hydra's InstantiationException; a missing operator
    capability is completed with the problems that offer it."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, MissingCapability):
            offering = problems_offering(cause.needed)
            hint = f" Problems that offer them: {', '.join(offering)}." if offering else ""
            raise ValueError(f"{cause}{hint}") from None
        if isinstance(cause, TypeError) and "unexpected keyword argument" in str(cause):
            raise ValueError(unknown_key_message(node, cause)) from None
        if isinstance(cause, (ValueError, FileNotFoundError, KeyError, TypeError)):
            raise cause from None
        raise


def unknown_key_message(node, err: TypeError) -> str:
    """Name the unknown key and the accepted ones (from the class's signature)."""
    import inspect

    module, _, name = str(node._target_).rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    key = re.search(r"unexpected keyword argument '([^']+)'", str(err))
    accepted = [
        p for p in inspect.signature(cls.__init__).parameters
        if p not in ("self", "net", "forward_op", "device")
    ]  # fmt: skip
    return (
        f"{name} takes no argument {key.group(1) if key else '?'!r} (a typo, or a key of "
        f"another version?); it accepts: {', '.join(accepted)}"
    )


def problems_offering(needed, config_dir=None) -> list[str]:
    """Names of ``configs/problem/*.yaml`` whose operator offers every capability in ``needed``
    (read from the configs; used for error messages, so unreadable entries are skipped)."""
    config_dir = Path(config_dir or CONFIG_DIR / "problem")
    names = []
    for path in sorted(config_dir.glob("*.yaml")):
        try:
            model = OmegaConf.load(path).get("model") or {}
            module, _, cls = str(model.get("_target_", "")).rpartition(".")
            op_cls = getattr(importlib.import_module(module), cls)
            caps = set(op_cls.capabilities_for(model))
        except Exception:  # a config without its own model (defaults) or an optional package
            continue
        if set(needed) <= caps:
            names.append(path.stem)
    return names


def uses_prior(method) -> bool:
    """Whether the algorithm evaluates a prior (its class attribute ``uses_prior``, true unless a
    prior-free method says otherwise)."""
    module, _, name = str(method._target_).rpartition(".")
    return bool(getattr(getattr(importlib.import_module(module), name), "uses_prior", True))


def build(config: DictConfig, device: torch.device):
    """Operator, test set, prior, algorithm, evaluator; every check happens here, before work."""
    testset = make(config.problem.data)  # data files first: the cheapest to check
    forward_op = make(config.problem.model, device=device)
    try:
        if uses_prior(config.algorithm.method):
            net = build_prior(
                config.pretrain.model,
                config.problem.get("prior"),
                device,
                allow_pickle=config.allow_pickle,
            )
        else:  # prior-free baselines run without a checkpoint
            net = shape_only(config.pretrain.model)
        if config.compile:
            net = torch.compile(net)
        counts = Counts()
        # black_box: the algorithm sees forward and misfit only (a derivative request raises).
        seen_op = BlackBox(forward_op) if config.get("black_box", False) else forward_op
        algo = make(
            config.algorithm.method,
            net=CountingNet(net, counts),
            forward_op=CountingOperator(seen_op, counts),
        )
        evaluator = make(config.problem.evaluator, forward_op=forward_op)
    except BaseException:
        forward_op.close()  # e.g. FWI's Dask cluster
        raise
    return forward_op, testset, algo, evaluator, counts


class StepReceiver:
    """What the algorithm's per-step ``report`` calls do (utils/progress.py): move a progress bar
    nested under the per-item bar, log the scalars to wandb against the step (e.g.
    ``data_fitting_loss``, which the reference's FWI and Navier-Stokes sweep files optimise), and
    keep the last ones, whose per-item values go into the items' rows."""

    def __init__(self, config, num_items: int):
        self.config, self.num_items = config, num_items
        self.bar, self.last = None, {}

    def __call__(self, step: int, total: int, scalars: dict) -> None:
        self.last = dict(scalars)
        values = {k: as_float(v) for k, v in scalars.items()}
        if self.bar is None and self.config.progress:
            desc = f"steps ({self.num_items} items)"
            self.bar = tqdm(total=total, desc=desc, leave=False, position=1, file=sys.stdout)
        if self.bar is not None:
            self.bar.update(step + 1 - self.bar.n)
            if values:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
            if step + 1 >= total:
                self.bar.close()
                self.bar = None
        if self.config.wandb and values:
            import wandb

            wandb.log(values)

    def per_item(self, name: str, num_items: int) -> list[float] | None:
        """The last reported ``name`` per item: a tensor with one value per row is averaged over
        each item's rows (item-major); a single number applies to every item."""
        if name not in self.last:
            return None
        value = self.last[name]
        if torch.is_tensor(value) and value.numel() > 1 and value.numel() % num_items == 0:
            rows = value.detach().to(torch.float64).reshape(num_items, -1)
            return [float(r.mean()) for r in rows]
        return [as_float(value)] * num_items


def finite_rows(t: torch.Tensor) -> list[bool]:
    flat = torch.view_as_real(t) if t.is_complex() else t
    return torch.isfinite(flat.reshape(t.shape[0], -1)).all(1).tolist()


def solve_batch(config, forward_op, testset, algo, counts, indices, device):
    """Simulate (or, for observed items, take) the measurements of a batch of items and solve
    it; yields per-item (id, observation, recon, target or None, compute)."""
    ids = [int(testset.id_list[i]) for i in indices]
    data = collate([testset[i] for i in indices])
    observed = "target" not in data  # measured data: no truth to simulate from
    if observed:
        observation = forward_op.observe(data).to(device)
    else:
        observation = forward_op(data, BatchRNG.for_items(config.seed, ids, OBSERVATION, device))
    bad = [i for i, ok in zip(ids, finite_rows(observation.y), strict=True) if not ok]
    if bad:
        raise ValueError(
            f"the {'observed' if observed else 'simulated'} measurements of items {bad} hold NaN "
            "or infinite values: the data (or the item's physics) are broken, not the "
            "algorithm; fix the data or leave those items out with id_list"
        )
    rng = BatchRNG.for_items(config.seed, ids, ALGORITHM, device)
    counts.reset()
    receiver = StepReceiver(config, len(ids))
    with Stopwatch(device) as watch, reporting(receiver):
        # oracle starts (data-fit baselines from a smoothed truth) get the normalized target
        extra = {}
        if getattr(algo, "uses_target", False):
            if observed:
                raise ValueError(
                    f"{type(algo).__name__} starts from the (smoothed) truth, which observed "
                    "data do not have; use its init=constant"
                )
            extra = {"target": data["target"].to(device)}
        recon = algo.inference(observation, num_samples=config.num_samples, rng=rng, **extra)
    n, b = config.num_samples, len(ids)
    if recon.shape[0] != b * n:
        raise RuntimeError(
            f"{type(algo).__name__} returned {recon.shape[0]} rows for {b} items x {n} samples"
        )
    compute = {
        "nfe": counts.nfe / b,
        "op_forward": counts.op_forward / b,
        "op_gradient": counts.op_gradient / b,
        "op_linear": counts.op_linear / b,
        "seconds": watch.seconds / b,
        "peak_mb": watch.peak_mb,
    }
    recon = forward_op.unnormalize(recon.detach()).reshape(b, n, *recon.shape[1:])
    target = None if observed else forward_op.unnormalize(data["target"].to(device))
    fitting = receiver.per_item("data_fitting_loss", b)  # the reference's last logged value
    for j, item_id in enumerate(ids):
        extra = {} if fitting is None else {"data_fitting_loss": fitting[j]}
        item_target = None if target is None else target[j : j + 1]
        yield item_id, observation.item(j), recon[j], item_target, {**compute, **extra}


def run(config: DictConfig) -> dict:
    """Every check happens before any work and before anything is written: run keys first, then
    everything ``build`` makes (data files, checkpoint, operator, algorithm); the folder is
    created and claimed only then."""
    check_compat(config.compat)
    check_run_keys(config)
    shard = parse_shard(config.get("shard"))
    device = pick_device(config.device)
    exp_dir = experiment_dir(config)
    if config.tf32:
        torch.set_float32_matmul_precision("high")
    if config.wandb:
        config = init_wandb(config)
        exp_dir = experiment_dir(config)
    setup_logging(None)
    forward_op, testset, algo, evaluator, counts = build(config, device)
    try:
        exp_dir.mkdir(parents=True, exist_ok=True)
        setup_logging(exp_dir)
        log.info(
            f"{config.problem.name} / {config.algorithm.name} (compat={config.compat}) -> "
            f"{exp_dir} on {device}" + (f", shard {shard[0]}/{shard[1]}" if shard[1] > 1 else "")
        )
        fp = fingerprint(result_config(config), config.problem.get("prior"))
        describe = {"problem": config.problem.name, "algorithm": config.algorithm.name}
        with ExperimentFolder(exp_dir, fp, config.overwrite, describe) as folder:
            return _run_items(
                config, exp_dir, folder, shard, device, forward_op, testset, algo, evaluator, counts
            )
    finally:
        forward_op.close()


def item_figure(config, exp_dir, item_id, obs, recon, target, forward_op) -> None:
    """The item's panel (and black-hole FITS) in ``<exp_dir>/figures/``; a figure that cannot be
    drawn is reported and never costs the result."""
    from inversebench.figures import save_item_figures

    try:
        save_item_figures(
            exp_dir,
            item_id,
            {"recon": recon, "target": target, "observation": obs},
            config.problem,
            forward_op=forward_op,
            label=config.algorithm.name,
        )
    except Exception as err:  # a picture never costs a result
        log.warning(f"item {item_id}: no figure ({type(err).__name__}: {err})")


def format_row(row: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "id")


class Scorecard:
    """The per-item metric rows of a run: each result is scored once (evaluator, the fraction of
    non-finite samples, an evaluator's poor-fit verdict, the algorithm's last data_fitting_loss)
    and its compute columns added; ``write`` makes metrics.csv and summary.json."""

    def __init__(self, config, exp_dir: Path, evaluator):
        self.config, self.exp_dir, self.evaluator = config, exp_dir, evaluator
        self.rows: dict[int, dict] = {}
        self.metric_names: list[str] = []

    def record(self, item_id: int) -> dict:
        res = load_result(result_path(self.exp_dir, item_id))
        values = self.evaluator(res["recon"], res.get("target"), res["observation"])
        # The fraction of the item's samples with a NaN or inf: said loudly, never averaged away.
        bad = ~torch.isfinite(res["recon"].flatten(1)).all(1)
        values["nonfinite"] = float(bad.double().mean())
        if bad.any():
            log.warning(
                f"item {item_id}: {int(bad.sum())} of {bad.numel()} samples are not finite "
                "(the algorithm diverged); its metrics are not meaningful"
            )
        if values.get("poor_fit", 0) > 0:  # an evaluator's verdict: the data were not fitted
            fit = [f"{k} {v:.3g}" for k, v in values.items() if "chi2" in k or "misfit" in k]
            log.warning(
                f"item {item_id}: POOR FIT -- the result does not fit its data "
                f"({', '.join(fit)}); the image shows the prior more than the measurements"
            )
        if "data_fitting_loss" in res.get("compute", {}):  # reported by the algorithm's last step
            values["data_fitting_loss"] = res["compute"]["data_fitting_loss"]
        self.metric_names.extend(k for k in values if k not in self.metric_names)
        row = self.rows[item_id] = {"id": item_id, **values, **res.get("compute", {})}
        if self.config.wandb:
            import wandb

            wandb.log({f"item/{k}": v for k, v in row.items()})
        return row

    @property
    def names(self) -> list[str]:
        return [*self.metric_names, *COMPUTE_COLUMNS]

    def ordered(self, ids) -> list[dict]:
        return [self.rows[i] for i in ids if i in self.rows]

    def write_csv(self, ids) -> None:
        atomic_write_csv(self.exp_dir / "metrics.csv", self.ordered(ids), ["id", *self.names])

    def summary(self, ids) -> dict:
        return summarize(self.ordered(ids), self.names)


def _run_items(
    config, exp_dir, folder, shard, device, forward_op, testset, algo, evaluator, counts
) -> dict:
    all_ids = [int(i) for i in testset.id_list]
    k, n = shard
    mine = all_ids[k - 1 :: n]
    adopted = set(folder.claim(result_fingerprint, lambda i: remove_result(exp_dir, i)))
    # Written only once everything is built, so a failed set-up leaves no record behind.
    atomic_write_text(exp_dir / "config.yaml", OmegaConf.to_yaml(config, resolve=True))
    if not config.inference:
        missing = [i for i in all_ids if i not in adopted]
        if missing:
            raise FileNotFoundError(
                f"inference=false but {len(missing)} of {len(all_ids)} results are missing in "
                f"{exp_dir} (items {missing[:12]}); run with inference=true"
            )
    saved = set() if (config.overwrite and config.inference) else adopted
    position = {i: p for p, i in enumerate(all_ids)}
    todo = [position[i] for i in mine if i not in saved]  # positions in the test set
    if saved & set(mine):
        log.info(f"resuming: {len(saved & set(mine))} of {len(mine)} items already solved")

    card = Scorecard(config, exp_dir, evaluator)
    bar = tqdm(total=len(mine), desc="items", disable=not config.progress, file=sys.stdout)
    for item_id in mine:
        if item_id in saved:
            card.record(item_id)
            bar.update(1)
    for start in range(0, len(todo), config.batch_size):
        batch = todo[start : start + config.batch_size]
        for item_id, obs, recon, target, compute in solve_batch(
            config, forward_op, testset, algo, counts, batch, device
        ):
            save_result(result_path(exp_dir, item_id), obs, recon, target, compute, folder.fp)
            row = card.record(item_id)
            if config.figures:
                item_figure(config, exp_dir, item_id, obs, recon, target, forward_op)
            bar.update(1)
            log.info(f"item {item_id}: {format_row(row)}")
        if n == 1:  # progress for people watching; shards write the merged file at the end
            card.write_csv(all_ids)
    bar.close()
    return finish(config, exp_dir, folder, shard, all_ids, len(mine), card)


def finish(config, exp_dir, folder, shard, all_ids, num_mine: int, card: Scorecard) -> dict:
    """The merged record, under the folder's lock: written by the last shard to finish (or the
    only run) once every item has a result of this run's settings."""
    k, n = shard
    with folder.locked():
        found = folder.result_fingerprints(result_fingerprint)
        present = {i for i, f in found.items() if f == folder.fp}
        waiting = [i for i in all_ids if i not in present]
        if waiting:
            log.info(
                f"shard {k}/{n} done ({num_mine} items); {len(waiting)} of {len(all_ids)} "
                "items are still to come from other shards: the last one writes metrics.csv and "
                "summary.json (or run again with inference=false)"
            )
            return card.summary(all_ids)
        for item_id in all_ids:
            if item_id not in card.rows:
                card.record(item_id)
        summary = card.summary(all_ids)
        diverged = [r["id"] for r in card.ordered(all_ids) if r.get("nonfinite", 0.0) > 0]
        if diverged:
            log.warning(
                f"{len(diverged)} of {len(all_ids)} items have non-finite samples: {diverged}"
            )
        card.write_csv(all_ids)
        atomic_write_json(
            exp_dir / "summary.json",
            {
                "num_items": len(all_ids),
                "compat": config.compat,
                "fingerprint": folder.fp,
                **summary,
            },
        )
    title = (
        f"{config.problem.name} / {config.algorithm.name} (compat={config.compat}): "
        f"{len(all_ids)} items, {config.num_samples} samples each"
    )
    log.info("\n" + summary_table(summary, card.names, title))
    if config.wandb:
        import wandb

        wandb.log(summary)
        wandb.finish()
    return summary


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(config: DictConfig) -> float | None:
    """A run; with ``objective=<metric>`` it returns that metric's mean over the items, the value
    Hydra sweepers (e.g. Optuna's) optimise."""
    summary = run(config)
    objective = config.get("objective")
    if objective is None:
        return None
    if objective not in summary:
        raise KeyError(
            f"objective={objective!r} is not among this run's metrics: {sorted(summary)[:20]}"
        )
    return float(summary[objective])


if __name__ == "__main__":
    main()
