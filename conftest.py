"""Root pytest configuration: slow tests run only with --run-slow (CI runs everything)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# the fault-injection suite's recorder and summary: a plugin, so that the summary is printed by the main process
# when pytest-xdist runs the tests in workers
sys.path.insert(0, str(Path(__file__).resolve().parent / "tests" / "faults"))
pytest_plugins = ["faultlog"]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one test per core (-n auto): the processes a test starts get one thread too, as the tests themselves do
    # (tests/conftest.py); two threads each on two busy cores spin-wait in OpenMP and run several times slower
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"


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
