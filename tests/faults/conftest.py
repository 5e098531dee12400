"""The fault-injection suite's recorder and its end-of-run summary.

Every test that injects a fault does it inside `faults.inject(kind, name)`: the fault is counted as injected
when the block starts and as survived only when the block ends without an exception, i.e. after the test has
verified that nothing was lost (checkpoints load, outputs are complete or absent, the message is clear).
Every fault is injected at a fixed point (tests/faults/faultrun.py fires signals from inside the code, never
after a delay), so the count does not depend on timing; a test that skips inside the block anyway is listed as
not injected, in red, and left out of the table.
`pytest_terminal_summary` prints the counts per kind and a summary line; with FGCLI_FAULTS_REPORT=FILE it also
writes them as a Markdown table (the one in the README's "Reliability" section).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: kind -> what the issue promises (README "Reliability" table rows, in this order)
KINDS: dict[str, str] = {
    "kill": "SIGKILL at any point, then --resume",
    "disk": "failing writes (disk full, I/O errors)",
    "untrusted": "untrusted / corrupt / foreign model files",
    "data": "bad images and manifests",
    "config": "bad flags and configs",
    "numeric": "NaN / Inf in loss or gradients",
    "interrupt": "Ctrl-C in train / export / prepare-data",
    "distributed": "a rank dying under torchrun",
}


@dataclass
class Fault:
    kind: str
    name: str
    test: str
    survived: bool = False
    skipped: bool = False  # the test skipped inside the block: the fault was not injected


@dataclass
class FaultLog:
    faults: list[Fault] = field(default_factory=list)


LOG_KEY = pytest.StashKey[FaultLog]()


def _log(config: pytest.Config) -> FaultLog:
    if LOG_KEY not in config.stash:
        config.stash[LOG_KEY] = FaultLog()
    return config.stash[LOG_KEY]


class Faults:
    """What a test uses to record the faults it injects (see the module docstring)."""

    def __init__(self, log: FaultLog, test: str) -> None:
        self._log = log
        self._test = test

    @contextlib.contextmanager
    def inject(self, kind: str, name: str) -> Iterator[Fault]:
        assert kind in KINDS, f"unknown fault kind {kind!r}"
        fault = Fault(kind, name, self._test)
        self._log.faults.append(fault)
        try:
            yield fault
        except pytest.skip.Exception:
            fault.skipped = True
            raise
        fault.survived = True


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname} {record.getMessage()}")


@pytest.fixture()
def fgcli_log() -> Iterator[list[str]]:
    """The messages of the `fgcli` logger during the test ("LEVEL text"), unwrapped by the console."""
    handler = _Collect()
    logger = logging.getLogger("fgcli")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


@pytest.fixture()
def faults(request: pytest.FixtureRequest) -> Faults:
    return Faults(_log(request.config), request.node.nodeid)


def injected(log: FaultLog) -> list[Fault]:
    return [f for f in log.faults if not f.skipped]


def summary_rows(log: FaultLog) -> list[tuple[str, str, int, int]]:
    rows = []
    for kind, text in KINDS.items():
        mine = [f for f in injected(log) if f.kind == kind]
        if mine:
            rows.append((kind, text, len(mine), sum(f.survived for f in mine)))
    return rows


def markdown_table(log: FaultLog) -> str:
    rows = summary_rows(log)
    lines = ["| fault kind | what is injected | injected | survived, nothing lost |", "|---|---|---:|---:|"]
    lines += [f"| {kind} | {text} | {n} | {ok} |" for kind, text, n, ok in rows]
    total, ok = sum(r[2] for r in rows), sum(r[3] for r in rows)
    lines.append(f"| **total** | | **{total}** | **{ok}** |")
    return "\n".join(lines) + "\n"


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    log = config.stash.get(LOG_KEY, None)
    if log is None or not log.faults:
        return
    tr = terminalreporter
    tr.section("fault injection summary")
    width = max(len(text) for text in KINDS.values())
    tr.write_line(f"{'kind':<12} {'what is injected':<{width}} {'injected':>8} {'survived':>8}")
    for kind, text, n, ok in summary_rows(log):
        tr.write_line(f"{kind:<12} {text:<{width}} {n:>8} {ok:>8}", red=ok < n)
    done = injected(log)
    total, ok = len(done), sum(f.survived for f in done)
    tr.write_line(f"{'total':<12} {'':<{width}} {total:>8} {ok:>8}", bold=True, red=ok < total)
    for f in [f for f in done if not f.survived][:20]:
        tr.write_line(f"  NOT survived: [{f.kind}] {f.name} ({f.test})", red=True)
    skipped = [f for f in log.faults if f.skipped]
    for f in skipped:
        tr.write_line(f"  NOT injected (the test skipped): [{f.kind}] {f.name} ({f.test})", red=True)
    tr.write_line(f"{total} faults injected, {ok} survived with nothing lost, {len(skipped)} not injected",
                  bold=True, red=ok < total or bool(skipped))
    report = os.environ.get("FGCLI_FAULTS_REPORT")
    if report:
        Path(report).write_text(markdown_table(log), encoding="utf-8")
        tr.write_line(f"(table written to {report})")
