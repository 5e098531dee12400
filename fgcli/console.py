"""Console output and logging: rich on the terminal, plain text in a run's log.txt."""

from __future__ import annotations

import logging
import os
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
