"""Console output and logging: rich on the terminal, plain text in a run's log.txt."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sized
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

T = TypeVar("T")
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


class Settings:
    """Global CLI switches set by the top-level callback."""

    debug: bool = os.environ.get("FGCLI_DEBUG", "") not in ("", "0")
    quiet: bool = False
    fast_exit: bool = False  # set by the console-script entry point: Ctrl-C leaves without interpreter teardown


settings = Settings()
log = logging.getLogger("fgcli")


def setup_logging(quiet: bool = False) -> None:
    """Rich console logging for the `fgcli` logger (idempotent)."""
    settings.quiet = settings.quiet or quiet
    handler = next((h for h in log.handlers if isinstance(h, RichHandler)), None)
    if handler is None:
        handler = RichHandler(console=err_console, show_time=False, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    # --quiet silences the terminal only: a run's log.txt still gets every INFO line
    handler.setLevel(logging.WARNING if settings.quiet else logging.NOTSET)
    log.setLevel(logging.DEBUG if settings.debug else logging.INFO)
    log.propagate = False


def add_file_log(path: str | Path) -> logging.Handler:
    """Also write the `fgcli` log to a plain text file (a run's log.txt); returns the handler."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    log.addHandler(handler)
    return handler


def progress_bar(*, info: bool = False, transfer: bool = False) -> Progress:
    """The transient progress bar of long steps, on stderr; hidden with --quiet and when stderr is not a
    terminal (a pipe or a file gets the log's one line per phase instead). `info=True` adds a column showing
    each task's `info` field (e.g. the running loss); `transfer=True` counts bytes (size and speed) instead of
    items (downloads, extraction)."""
    extra = [TextColumn("{task.fields[info]}")] if info else []
    count = [DownloadColumn(), TransferSpeedColumn()] if transfer else [MofNCompleteColumn()]
    return Progress(TextColumn("{task.description}"), BarColumn(), *count, *extra,
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err_console,
                    transient=True, disable=settings.quiet or not err_console.is_terminal)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield `items` while a progress bar counts them (`total` defaults to len(items) when it has one)."""
    if total is None and isinstance(items, Sized):
        total = len(items)
    with progress_bar() as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


class _LinesToLog:
    """A text stream whose lines (split at newlines and carriage returns, as progress bars write) become
    DEBUG records of the fgcli log, prefixed with `source`."""

    def __init__(self, source: str) -> None:
        self.source, self._pending = source, ""

    def write(self, text: str) -> int:
        *lines, self._pending = re.split(r"[\r\n]", self._pending + text)
        for line in lines:
            if line.strip():
                log.debug(f"{self.source}: {line.rstrip()}")
        return len(text)

    def flush(self) -> None:
        if self._pending.strip():
            log.debug(f"{self.source}: {self._pending.rstrip()}")
        self._pending = ""

    def isatty(self) -> bool:
        return False


class _RecordsToLog(logging.Handler):
    """Re-emits another logger's records as DEBUG records of the fgcli log."""

    def __init__(self, source: str) -> None:
        super().__init__(logging.DEBUG)
        self.source = source

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == log.name or record.name.startswith(log.name + "."):
            return  # fgcli's own records (when its logger propagates, as before setup_logging)
        log.debug(f"{self.source}: {record.levelname}: {record.getMessage()}")


@contextlib.contextmanager
def library_output(source: str) -> Iterator[None]:
    """Route a library's chatter to the fgcli log at DEBUG level (shown with --debug, never on the terminal
    otherwise): its print()s to stdout, its Python warnings and its records to the root logger (onnxruntime's
    quantizer calls `logging.warning`, which would also install a stderr handler on the root logger).
    stderr is left alone: fgcli's own progress bars draw there."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [_RecordsToLog(source)]
    lines = _LinesToLog(source)
    try:
        with contextlib.redirect_stdout(lines), warnings.catch_warnings(record=True) as caught:  # type: ignore[type-var]
            warnings.simplefilter("always")
            try:
                yield
            finally:
                for w in caught:
                    log.debug(f"{source}: {w.category.__name__}: {w.message}")
    finally:
        lines.flush()
        root.handlers = saved
