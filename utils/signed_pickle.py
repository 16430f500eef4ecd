"""Pickled caches that load only what this user's own processes wrote.

Unpickling runs code, so a cache file somebody else placed in the cache folder must never be
loaded. Each file carries an HMAC-SHA256 of its bytes under a per-user key (``pickle.key`` in the
user cache folder, created 0600); a file without a valid signature is refused before ``pickle``
sees it, and the caller rebuilds what it holds. This is the only place the project unpickles
anything without ``allow_pickle``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import secrets
from pathlib import Path

from utils.io import user_cache_dir

MAGIC = b"IBSIG1"


def _key() -> bytes:
    path = user_cache_dir() / "pickle.key"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".pickle.key.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        try:
            os.link(tmp, path)  # the first writer wins; everyone reads the same key
        except FileExistsError:
            pass
        os.unlink(tmp)
    if path.stat().st_mode & 0o077:
        raise PermissionError(f"{path} is readable by others; chmod 600 it (or delete it)")
    return path.read_bytes()


def dump_signed(obj, path) -> None:
    """Pickle ``obj`` to ``path`` (atomically) with this user's signature."""
    payload = pickle.dumps(obj)
    sig = hmac.new(_key(), payload, hashlib.sha256).digest()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + sig + payload)
    os.replace(tmp, path)


def load_signed(path):
    """The object in ``path`` if its signature is this user's; None otherwise (missing, foreign,
    tampered or partial files are never unpickled)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    head = len(MAGIC) + 32
    if len(data) < head or not data.startswith(MAGIC):
        return None
    sig, payload = data[len(MAGIC) : head], data[head:]
    if not hmac.compare_digest(sig, hmac.new(_key(), payload, hashlib.sha256).digest()):
        return None
    try:
        return pickle.loads(payload)
    except Exception:  # signed by us but from another version of the code: rebuild
        return None
