"""Inference: load -> simulate -> solve -> evaluate -> log, over batches of test items.

    python main.py problem=<problem> algorithm=<algorithm> pretrain=<prior> [key=value ...]

Results go to ``<problem.exp_dir>/<algorithm.name>/<exp_name>/``: the resolved ``config.yaml``,
``log.txt``, ``result_<id>.pt`` per item, ``metrics.csv`` (one row per item) and
``summary.json``. Items whose result exists are not recomputed unless ``overwrite=true``;
``inference=false`` only evaluates saved results.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from inverse_problems.black_box import BlackBox
from models.loading import build_prior
from utils.compat import check_compat
from utils.compute import CountingNet, CountingOperator, Counts, Stopwatch
from utils.io import atomic_write_csv, atomic_write_json, atomic_write_text
from utils.progress import reporting
from utils.results import (
    COMPUTE_COLUMNS,
    check_same_experiment,
    collate,
    load_result,
    result_path,
    save_result,
    summarize,
    summary_table,
)
from utils.rng import ALGORITHM, OBSERVATION, BatchRNG

log = logging.getLogger("inversebench")


def pick_device(name: str) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} asked for, but CUDA is not available; use device=cpu")
    return device


def setup_logging(exp_dir: Path) -> None:
    log.setLevel(logging.INFO)
    log.handlers.clear()
    fmt = logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S")
    for handler in (logging.FileHandler(exp_dir / "log.txt"), logging.StreamHandler(sys.stdout)):
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


def build(config: DictConfig, device: torch.device):
    """Operator, test set, prior, algorithm, evaluator; every check happens here, before work."""
    forward_op = instantiate(config.problem.model, device=device)
    testset = instantiate(config.problem.data)
    net = build_prior(
        config.pretrain.model, config.problem.get("prior"), device, allow_pickle=config.allow_pickle
    )
    if config.compile:
        net = torch.compile(net)
    counts = Counts()
    # black_box: the algorithm sees forward and misfit only (a derivative request raises).
    seen_op = BlackBox(forward_op) if config.get("black_box", False) else forward_op
    try:
        algo = instantiate(
            config.algorithm.method,
            net=CountingNet(net, counts),
            forward_op=CountingOperator(seen_op, counts),
        )
    except InstantiationException as err:
        if isinstance(err.__cause__, ValueError):  # the algorithm's own message (capabilities...)
            raise err.__cause__ from None
        raise
    evaluator = instantiate(config.problem.evaluator, forward_op=forward_op)
    return forward_op, testset, algo, evaluator, counts


def step_receiver(config, num_items: int):
    """What the algorithm's per-step ``report`` calls do (utils/progress.py): move a progress bar
    nested under the per-item bar and, with wandb, log the scalars (e.g. ``data_fitting_loss``,
    which the reference's sweep files optimise) against the step."""
    state = {"bar": None}

    def receive(step: int, total: int, scalars: dict) -> None:
        bar = state["bar"]
        if bar is None and config.progress:
            bar = state["bar"] = tqdm(
                total=total,
                desc=f"steps ({num_items} items)",
                leave=False,
                position=1,
                file=sys.stdout,
            )
        if bar is not None:
            bar.update(step + 1 - bar.n)
            if scalars:
                bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items()}, refresh=False)
            if step + 1 >= total:
                bar.close()
                state["bar"] = None
        if config.wandb and scalars:
            import wandb

            wandb.log(scalars)

    return receive


def solve_batch(config, forward_op, testset, algo, counts, indices, device):
    """Simulate and solve a batch of items; returns per-item (observation, recon, compute)."""
    ids = [int(testset.id_list[i]) for i in indices]
    data = collate([testset[i] for i in indices])
    observation = forward_op(data, BatchRNG.for_items(config.seed, ids, OBSERVATION, device))
    rng = BatchRNG.for_items(config.seed, ids, ALGORITHM, device)
    counts.reset()
    with Stopwatch(device) as watch, reporting(step_receiver(config, len(ids))):
        # oracle starts (data-fit baselines from a smoothed truth) get the normalized target
        extra = {"target": data["target"].to(device)} if getattr(algo, "uses_target", False) else {}
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
    target = forward_op.unnormalize(data["target"].to(device))
    for j, item_id in enumerate(ids):
        yield item_id, observation.item(j), recon[j], target[j : j + 1], compute


def run(config: DictConfig) -> dict:
    check_compat(config.compat)
    device = pick_device(config.device)
    if config.tf32:
        torch.set_float32_matmul_precision("high")
    if config.wandb:
        config = init_wandb(config)
    exp_dir = Path(config.problem.exp_dir) / config.algorithm.name / config.exp_name
    exp_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(exp_dir)
    check_same_experiment(exp_dir, config)
    log.info(
        f"{config.problem.name} / {config.algorithm.name} (compat={config.compat}) -> {exp_dir} "
        f"on {device}"
    )

    forward_op, testset, algo, evaluator, counts = build(config, device)
    try:
        return _run_items(config, exp_dir, device, forward_op, testset, algo, evaluator, counts)
    finally:
        forward_op.close()


def _run_items(config, exp_dir, device, forward_op, testset, algo, evaluator, counts) -> dict:
    # Written only once everything is built, so a failed set-up leaves no record behind.
    atomic_write_text(exp_dir / "config.yaml", OmegaConf.to_yaml(config, resolve=True))
    ids = [int(i) for i in testset.id_list]
    saved = {i for i in ids if result_path(exp_dir, i).is_file()}
    if not config.inference and len(saved) < len(ids):
        missing = [str(result_path(exp_dir, i)) for i in ids if i not in saved]
        raise FileNotFoundError(
            f"inference=false but {len(missing)} results are missing, "
            f"e.g. {missing[0]}; run with inference=true"
        )
    if config.overwrite and config.inference:
        saved = set()
    todo = [k for k, i in enumerate(ids) if i not in saved]  # positions in the test set
    if saved:
        log.info(f"resuming: {len(saved)} of {len(ids)} items already solved")

    rows: dict[int, dict] = {}
    metric_names: list[str] = []

    def record(item_id: int) -> None:
        res = load_result(result_path(exp_dir, item_id))
        values = evaluator(res["recon"], res["target"], res["observation"])
        # The fraction of the item's samples with a NaN or inf: said loudly, never averaged away.
        bad = ~torch.isfinite(res["recon"].flatten(1)).all(1)
        values["nonfinite"] = float(bad.double().mean())
        if bad.any():
            log.warning(
                f"item {item_id}: {int(bad.sum())} of {bad.numel()} samples are not finite "
                "(the algorithm diverged); its metrics are not meaningful"
            )
        metric_names.extend(k for k in values if k not in metric_names)
        rows[item_id] = {"id": item_id, **values, **res.get("compute", {})}
        if config.wandb:
            import wandb

            wandb.log({f"item/{k}": v for k, v in rows[item_id].items()})

    columns = lambda: ["id", *metric_names, *COMPUTE_COLUMNS]  # noqa: E731
    ordered = lambda: [rows[i] for i in ids if i in rows]  # noqa: E731
    bar = tqdm(total=len(ids), desc="items", disable=not config.progress, file=sys.stdout)
    for item_id in ids:
        if item_id in saved:
            record(item_id)
            bar.update(1)
    for start in range(0, len(todo), config.batch_size):
        batch = todo[start : start + config.batch_size]
        for item_id, obs, recon, target, compute in solve_batch(
            config, forward_op, testset, algo, counts, batch, device
        ):
            save_result(result_path(exp_dir, item_id), obs, recon, target, compute)
            record(item_id)
            bar.update(1)
            log.debug(f"item {item_id}: {rows[item_id]}")
        atomic_write_csv(exp_dir / "metrics.csv", ordered(), columns())
    bar.close()

    summary = summarize(ordered(), [*metric_names, *COMPUTE_COLUMNS])
    diverged = [r["id"] for r in ordered() if r.get("nonfinite", 0.0) > 0]
    if diverged:
        log.warning(f"{len(diverged)} of {len(rows)} items have non-finite samples: {diverged}")
    atomic_write_csv(exp_dir / "metrics.csv", ordered(), columns())
    atomic_write_json(
        exp_dir / "summary.json", {"num_items": len(rows), "compat": config.compat, **summary}
    )
    log.info(
        "\n"
        + summary_table(
            summary,
            [*metric_names, *COMPUTE_COLUMNS],
            f"{config.problem.name} / {config.algorithm.name} (compat={config.compat}): "
            f"{len(rows)} items, {config.num_samples} samples each",
        )
    )
    if config.wandb:
        import wandb

        wandb.log(summary)
        wandb.finish()
    return summary


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(config: DictConfig) -> None:
    run(config)


if __name__ == "__main__":
    main()
