"""Fixtures of the fault-injection tests. The `faults` recorder and the end-of-run summary live in
`faultlog.py`, a plugin the root conftest loads (so that they also work under pytest-xdist)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


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
