"""Atomic file writes (a reader never sees a half-written file, and a failed write keeps the old one), and
what torch's safe loader says when it refuses a file."""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from fgcli.errors import UserError


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temp file beside `path`; on success fsync and rename it onto `path`, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        _remove_quietly(tmp)
        raise UserError(f"could not write {path}: {e.strerror or e}. Free disk space (or write to another "
                        f"folder) and rerun; the previous {path.name} (if any) is unchanged.") from e
    except BaseException:
        _remove_quietly(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically (UTF-8)."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_save(path: str | os.PathLike, writer: Callable[[IO[bytes]], None]) -> None:
    """Serialise into memory with `writer(buffer)`, then write the bytes atomically."""
    buf = io.BytesIO()
    writer(buf)
    atomic_write_bytes(path, buf.getvalue())


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def refused_global(error: BaseException) -> str | None:
    """The global (e.g. 'posix.system') that torch's weights_only unpickler refused to load, '' when it refused
    one it does not name, or None when the file was merely damaged (not pickled code)."""
    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)|global [`'\"]?([\w.]+)", text)
    if found:
        return found.group(1) or found.group(2)
    return "" if "weights_only" in text.lower() and "unsupported" in text.lower() and "global" in text.lower() \
        else None
