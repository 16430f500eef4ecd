"""Files a person can open, written atomically (write to a temporary file, then rename)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import tempfile
from pathlib import Path

import torch


def _host() -> str:
    return socket.gethostname().replace(".", "_")


def remove_dead_temporaries(folder) -> list[Path]:
    """Delete the temporary files that writers on this host left when they were killed (their
    process is gone); returns them. Files of live writers and of other hosts are kept."""
    host = _host()
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        m = re.search(r"\.(?P<host>[^.]+)-(?P<pid>\d+)\.[^.]*\.tmp$", tmp.name)
        if not m or m["host"] != host:
            continue
        try:
            os.kill(int(m["pid"]), 0)
            continue  # its writer is alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's host and pid in the name: a killed writer's leftovers can be told apart from
    # a live one's (remove_dead_temporaries), also on a folder shared by several machines.
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{_host()}-{os.getpid()}.", suffix=".tmp"
    )
    try:
        # mkstemp creates 0600; results are for the group too, as the umask allows (0644 at 022)
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj, path) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_csv(path, rows: list[dict], columns: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k, "")) for k in columns})
    atomic_write_text(path, buf.getvalue())


def _fmt(v):
    return f"{v:.8g}" if isinstance(v, float) else v


def user_cache_dir() -> Path:
    """Per-user cache for derived files (SVDs, compiled kernels): ``$INVERSEBENCH_CACHE``, else
    ``$XDG_CACHE_HOME/inversebench``, else ``~/.cache/inversebench`` -- never the working
    directory."""
    if os.environ.get("INVERSEBENCH_CACHE"):
        return Path(os.environ["INVERSEBENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "inversebench"
