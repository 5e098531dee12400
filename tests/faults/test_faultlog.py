"""The fault recorder counts every fault once, in a plain run and under pytest-xdist workers alike."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

FAKE_SUITE = '''
import pytest

def test_survives(faults):
    with faults.inject("kill", "a fault that is survived"):
        pass
    with faults.inject("disk", "another"):
        pass

def test_fails_inside(faults):
    with faults.inject("disk", "a fault that is not survived"):
        assert False

def test_skips_inside(faults):
    with faults.inject("data", "a fault that never ran"):
        pytest.skip("the work finished before the fault")
'''


@pytest.mark.parametrize("workers", [[], ["-p", "xdist", "-n", "2"]], ids=["in-process", "xdist"])
def test_summary_counts_each_fault_once(tmp_path: Path, workers: list[str]) -> None:
    (tmp_path / "conftest.py").write_text(f"import sys\nsys.path.insert(0, {str(HERE)!r})\n"
                                          "pytest_plugins = ['faultlog']\n")
    (tmp_path / "test_fake.py").write_text(FAKE_SUITE)
    table = tmp_path / "faults.md"
    env = dict(os.environ, FGCLI_FAULTS_REPORT=str(table), PYTEST_ADDOPTS="")
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                           "-c", os.devnull, *workers, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    out = done.stdout
    assert done.returncode == 1, out + done.stderr  # the failing fake test
    assert "3 faults injected, 2 survived with nothing lost, 1 not injected" in out, out
    assert "NOT survived: [disk] a fault that is not survived" in out
    assert "NOT injected (the test skipped): [data] a fault that never ran" in out
    assert table.read_text().splitlines()[2:] == [
        "| kill | SIGKILL at any point, then --resume | 1 | 1 |",
        "| disk | failing writes (disk full, I/O errors) | 2 | 1 |",
        "| **total** | | **3** | **2** |",
    ]
