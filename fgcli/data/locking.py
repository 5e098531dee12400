"""Inter-process locks on folders, kept out of the user's data.

The lock is an advisory `fcntl.flock` on a file under the fgcli cache (`<cache>/locks/<hash>.lock`), never
beside the locked folder: the kernel drops the lock when its holder exits, also after Ctrl-C or `kill -9`,
so a stale lock cannot block a later run, and nothing is left next to the user's data. The small lock files
are reused, never deleted (deleting a lock file that another process is waiting on would break the lock).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def lock_path(target: Path) -> Path:
    """The lock file of folder `target`: under the fgcli cache, or the temp dir when the cache is read-only."""
    from fgcli.data.pipeline import cache_dir

    key = hashlib.sha1(os.fsencode(os.path.abspath(target))).hexdigest()[:20]
    user = os.getuid() if hasattr(os, "getuid") else "user"
    for base in (cache_dir() / "locks", Path(tempfile.gettempdir()) / f"fgcli-locks-{user}"):
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(base, os.W_OK):
            return base / f"{key}.lock"
    raise OSError(f"no writable folder for fgcli's lock files (tried {cache_dir() / 'locks'} and the temp dir)")


@contextlib.contextmanager
def folder_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on folder `target` (which need not exist); no-op where fcntl is unavailable."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(lock_path(target), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
