"""An experiment folder is a contract: every result in it was made by the same settings.

* **Fingerprint.** ``fingerprint(settings, prior_path)`` hashes everything that makes a result:
  the resolved config without run-only keys, the folder's name, the item list and the metric
  settings (``utils.results.result_config``: none of those changes an item's result), plus the
  SHA-256 of the prior checkpoint's bytes (a checkpoint replaced at the same path changes it).
  Every ``result_<id>.pt`` records the fingerprint of the run that made it, ``experiment.json``
  the folder's.
* **Adoption.** A rerun adopts only results whose fingerprint is its own. A result of other settings
  is *stale*: without ``overwrite`` the run is refused, naming the stale items; with ``overwrite``
  every stale result in the folder is deleted (items outside this run's ``id_list`` included), so
  no stale item is ever left behind.
* **Locks** (``fcntl.flock``, released by the kernel when a process dies, so a killed run leaves
  nothing stuck). ``.lock`` is held exclusively for the short decisions (claiming the folder,
  merging the shards' metrics). ``.active`` is held *shared* by every run writing into the folder
  for its whole duration: runs of the same settings (shards of one experiment) share the folder;
  a run of other settings needs ``.active`` exclusively to take the folder over, so it is refused
  while any run is writing there, and may proceed (with ``overwrite``) once none is.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from pathlib import Path

from omegaconf import OmegaConf

from utils.io import atomic_write_json, remove_dead_temporaries
from utils.results import RUN_ONLY_KEYS

FOLDER_FILE = "experiment.json"


def file_checksum(path) -> str | None:
    """SHA-256 of a file's bytes (None when there is no file)."""
    if path is None or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(settings: dict, prior_path=None) -> str:
    """A short hash of the result-determining settings (a plain dict) and the prior's bytes."""
    payload = json.dumps(
        {"settings": settings, "prior_sha256": file_checksum(prior_path)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class FolderBusy(RuntimeError):
    """Another run with other settings is writing into the folder."""


class StaleResults(ValueError):
    """The folder holds results of other settings."""


class ExperimentFolder:
    """Claim ``exp_dir`` for a run whose results have fingerprint ``fp`` (use as a context
    manager); ``describe`` is written to ``experiment.json`` for people (e.g. the overrides)."""

    def __init__(self, exp_dir, fp: str, overwrite: bool = False, describe: dict | None = None):
        self.dir = Path(exp_dir)
        self.fp = fp
        self.overwrite = bool(overwrite)
        self.describe = describe or {}
        self._active = None

    # -- locks -------------------------------------------------------------------------------------
    def _open(self, name):
        return open(self.dir / name, "a+")

    def locked(self, timeout: float = 600.0):
        """The exclusive ``.lock`` for a short critical section (waits at most ``timeout``)."""
        return _Flock(self.dir / ".lock", timeout)

    # -- the contract -------------------------------------------------------------------------
    def folder_fingerprint(self) -> str | None:
        path = self.dir / FOLDER_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text()).get("fingerprint")
        except (OSError, ValueError):
            return None

    def result_fingerprints(self, load_fp) -> dict[int, str | None]:
        """``{item id: fingerprint}`` of every result file in the folder (``load_fp(path)`` reads
        one result's fingerprint; None for results made before fingerprints existed)."""
        out = {}
        for path in self.dir.glob("result_*.pt"):
            stem = path.stem.removeprefix("result_")
            if stem.lstrip("-").isdigit():
                out[int(stem)] = load_fp(path)
        return out

    def __enter__(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        self._active = self._open(".active")
        with self.locked():
            if self.folder_fingerprint() not in (None, self.fp):
                # Another experiment's folder: take it over only when nobody writes into it.
                try:
                    fcntl.flock(self._active, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    self._active.close()
                    raise FolderBusy(
                        f"{self.dir} is in use by a running experiment with other settings; "
                        "use another exp_name=..., or wait until it has finished"
                    ) from None
            # Shared from here on: runs of the same settings (shards) write side by side.
            fcntl.flock(self._active, fcntl.LOCK_SH)
        return self

    def claim(self, load_fp, remove) -> list[int]:
        """Check the folder's results against this run's fingerprint, under ``.lock``. Stale
        results are removed with ``overwrite`` (``remove(item_id)``), refused otherwise; returns
        the ids of the results that may be adopted. Records the folder's fingerprint."""
        with self.locked():
            found = self.result_fingerprints(load_fp)
            stale = sorted(i for i, f in found.items() if f != self.fp)
            if stale and not self.overwrite:
                kinds = {
                    "unreadable (corrupt or truncated)": [
                        i for i in stale if found[i] == "unreadable"
                    ],
                    "made before results recorded their settings": [
                        i for i in stale if found[i] is None
                    ],
                    "made with other settings": [
                        i for i in stale if found[i] not in (None, "unreadable")
                    ],
                }
                said = "; ".join(
                    f"{kind}: result_{{{_ids(ids)}}}.pt" for kind, ids in kinds.items() if ids
                )
                raise StaleResults(
                    f"{self.dir} holds results this run cannot adopt ({said}); use another "
                    "exp_name=..., or overwrite=true to recompute them (they are then deleted)"
                )
            for i in stale:
                remove(i)
            remove_dead_temporaries(self.dir)  # leftovers of killed runs
            atomic_write_json(
                self.dir / FOLDER_FILE,
                {"fingerprint": self.fp, "claimed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "pid": os.getpid(), **self.describe},
            )  # fmt: skip
            return sorted(i for i, f in found.items() if f == self.fp)

    def __exit__(self, *exc):
        if self._active is not None:
            self._active.close()  # releases the shared lock
            self._active = None
        return False


class _Flock:
    def __init__(self, path: Path, timeout: float):
        self.path, self.timeout = path, timeout

    def __enter__(self):
        self.f = open(self.path, "a+")
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.f.close()
                    raise FolderBusy(
                        f"{self.path} stayed locked for {self.timeout:.0f} s"
                    ) from None
                time.sleep(0.05)

    def __exit__(self, *exc):
        self.f.close()
        return False


def _ids(ids: list[int]) -> str:
    return ", ".join(map(str, ids[:12])) + (f" and {len(ids) - 12} more" if len(ids) > 12 else "")


def settings_of(config) -> dict:
    """Plain dict of a DictConfig or dict."""
    return OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else config


# -- naming and splitting a run's folder ----------------------------------------------------
def experiment_dir(config) -> Path:
    """``<problem.exp_dir>/<algorithm.name>/<experiment name>``."""
    return Path(config.problem.exp_dir) / config.algorithm.name / experiment_name(config)


def parse_shard(value) -> tuple[int, int]:
    """``shard=k/n`` (1 <= k <= n): this process solves items k, k+n, k+2n, ... of the test set
    (positions, 1-based); ``None`` is ``1/1``."""
    if value in (None, "", "1/1"):
        return 1, 1
    try:
        k, n = (int(part) for part in str(value).split("/"))
    except ValueError:
        k = n = 0
    if not 1 <= k <= n:
        raise ValueError(
            f"shard={value!r} is not k/n with 1 <= k <= n (e.g. shard=2/4: the second of four "
            "processes that share one experiment's items)"
        )
    return k, n


def experiment_name(config) -> str:
    """``exp_name``; for a trial of a sweep (a Hydra multirun, or a wandb sweep agent) a name made
    from the trial's swept overrides (or the wandb run id), under ``exp_name`` when one is given,
    so that trials never share a folder (``problem``, ``algorithm``, ``pretrain`` and run-only keys
    are left out of it: their folders differ already)."""
    name = str(config.exp_name)
    if not name or name != name.strip() or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ValueError(
            f"exp_name={name!r} must be a relative folder name inside the problem's exp_dir "
            "(no '..', not empty)"
        )
    if not is_sweep_trial():
        return name
    if os.environ.get("WANDB_RUN_ID"):  # a wandb sweep agent's trial: the run's id
        trial = f"sweep-{sanitize_name(os.environ['WANDB_RUN_ID'])}"
        return trial if name == "default" else f"{name}/{trial}"
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    swept = swept_keys(hydra_cfg)
    skip = {"problem", "algorithm", "pretrain", "exp_name", *RUN_ONLY_KEYS}
    overrides = []
    for o in hydra_cfg.overrides.task:
        key = o.split("=", 1)[0].lstrip("+~")
        if key not in skip and (swept is None or key in swept):
            overrides.append(o)
    trial = sanitize_name(",".join(sorted(overrides)))
    if not trial:
        return name  # nothing swept but problem/algorithm: their folders already differ
    return trial if name == "default" else f"{name}/{trial}"  # a named sweep: one folder each


def swept_keys(hydra_cfg) -> set[str] | None:
    """The keys a multirun sweeps over: those given several values on its command line (read
    from the sweep's ``multirun.yaml``) and those of a sweeper's search space (e.g. Optuna's
    ``hydra.sweeper.params``); None when the sweep's record cannot be read."""
    keys = set((hydra_cfg.get("sweeper") or {}).get("params") or {})
    record = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
    try:
        task = OmegaConf.load(record).hydra.overrides.task
    except Exception:  # another launcher's layout: name the folder from every override
        return None
    sweep_syntax = re.compile(r",|^(range|choice|interval|glob|tag|sort|shuffle)\(")
    for o in task:
        key, _, value = o.partition("=")
        if sweep_syntax.search(value):
            keys.add(key.lstrip("+~"))
    return keys


def is_sweep_trial() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if os.environ.get("WANDB_SWEEP_ID"):
        return True
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sanitize_name(text: str, limit: int = 120) -> str:
    """A folder name from override text: path separators and odd characters become '_'; long
    names keep a readable head and a hash of the whole."""
    clean = re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)
    if len(clean) > limit:
        digest = hashlib.sha256(text.encode()).hexdigest()[:10]
        clean = f"{clean[: limit - 11]}-{digest}"
    return clean
