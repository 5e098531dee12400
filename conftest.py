"""Root pytest configuration: slow tests run only with --run-slow (CI runs everything)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# the fault-injection suite's recorder and summary: a plugin, so that the summary is printed by the main process
# when pytest-xdist runs the tests in workers
sys.path.insert(0, str(Path(__file__).resolve().parent / "tests" / "faults"))
pytest_plugins = ["faultlog"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run tests marked slow (end-to-end trainings, fault injection, DDP)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
