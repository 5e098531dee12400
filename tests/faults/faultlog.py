"""The fault-injection suite's recorder and its end-of-run summary (a pytest plugin, loaded by the root conftest).

Every test that injects a fault does it inside `faults.inject(kind, name)`: the fault is counted as injected
when the block starts and as survived only when the block ends without an exception, i.e. after the test has
verified that nothing was lost (checkpoints load, outputs are complete or absent, the message is clear).
Every fault is injected at a fixed point (tests/faults/faultrun.py fires signals from inside the code, never
after a delay), so the count does not depend on timing; a test that skips inside the block anyway is listed as
not injected, in red, and left out of the table.

Each fault travels in its test's report (`user_properties`), so that the counts are complete when pytest-xdist
runs the tests in worker processes: the summary is built where the reports arrive (the main process).
`pytest_terminal_summary` prints the counts per kind and a summary line; with FGCLI_FAULTS_REPORT=FILE it also
writes them as a Markdown table (the one in the README's "Reliability" section).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
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
#: the name of a fault's entry in its test's `user_properties`
PROPERTY = "fgcli_fault"


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


class Faults:
    """What a test uses to record the faults it injects (see the module docstring)."""

    def __init__(self, item: pytest.Item) -> None:
        self._item = item

    @contextlib.contextmanager
    def inject(self, kind: str, name: str) -> Iterator[Fault]:
        assert kind in KINDS, f"unknown fault kind {kind!r}"
        fault = Fault(kind, name, self._item.nodeid)
        try:
            yield fault
        except pytest.skip.Exception:
            fault.skipped = True
            raise
        else:
            fault.survived = True
        finally:
            self._item.user_properties.append((PROPERTY, asdict(fault)))


@pytest.fixture()
def faults(request: pytest.FixtureRequest) -> Faults:
    return Faults(request.node)


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


class FaultRecorder:
    """Collects the faults from the tests' call reports and prints the summary at the end of the session."""

    def __init__(self) -> None:
        self.log = FaultLog()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            self.log.faults += [Fault(**value) for name, value in report.user_properties if name == PROPERTY]

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.log.faults:
            print_summary(terminalreporter, self.log)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(FaultRecorder(), "fgcli-fault-recorder")


def print_summary(tr, log: FaultLog) -> None:
    """The counts per kind, the faults not survived or not injected, and a summary line."""
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
