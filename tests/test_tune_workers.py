"""`fgcli tune` across processes: a worker killed mid-trial (SIGKILL) and the same command run again, and two
workers on one study, on the SQLite file and on a real PostgreSQL server this test starts itself; no trial is
lost or run twice."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from fgcli.engine.rundir import read_results_csv

FAULTRUN = Path(__file__).resolve().parent / "faults" / "faultrun.py"
TINY = ["--method", "baseline", "--data", "demo", "--backbone", "test_resnet", "--img-size", "32", "--batch-size", "8",
        "--workers", "0", "--device", "cpu", "--set", "data.demo_size=32", "--set", "data.demo_classes=4",
        "--set", "data.demo_per_class=8", "--set", "data.val_fraction=0.25", "--heartbeat", "1", "--pruner", "none"]


def _env(fault: str | None = None) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("FGCLI_FAULT", None)
    if fault:
        env["FGCLI_FAULT"] = fault
    return env


def _tune(*args: str, fault: str | None = None) -> list[str]:
    entry = [str(FAULTRUN)] if fault else ["-m", "fgcli"]
    return [sys.executable, *entry, "--quiet", "tune", *TINY, *args]


def _study(url: str, name: str) -> optuna.Study:
    # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the postgres extra brings psycopg2 (fgcli names it)
    return optuna.load_study(study_name=name, storage=url.replace("postgresql://", "postgresql+psycopg2://"))


def _check_each_trial_once(study: optuna.Study, trials: int, epochs: int) -> None:
    """Exactly `trials` complete trials, numbered 0..trials-1, each with its own whole run folder."""
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.COMPLETE] * trials, states
    folders = [Path(t.user_attrs["fgcli_run_dir"]) for t in study.get_trials()]
    assert [f.name for f in folders] == [f"trial_{i:03d}" for i in range(trials)]
    for folder in folders:
        assert len(read_results_csv(folder / "results.csv")) == epochs
    assert len({tuple(sorted(t.params.items())) for t in study.get_trials()}) == trials  # no trial run twice


@pytest.mark.slow
def test_a_worker_killed_mid_trial_resumes_it_when_rerun(tmp_path: Path) -> None:
    args = ["--trials", "3", "--epochs", "2", "--project", str(tmp_path)]
    killed = subprocess.run(_tune(*args, fault="epoch:trial_001:1"), env=_env("epoch:trial_001:1"),
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    folder = tmp_path / "baseline-demo"
    url = f"sqlite:///{folder / 'study.db'}"
    running = _study(url, "baseline-demo").get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert [t.number for t in running] == [1]  # left RUNNING by the kill
    before = read_results_csv(folder / "trials" / "trial_001" / "results.csv")
    assert len(before) == 1
    again = subprocess.run(_tune(*args), env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    trials = _study(url, "baseline-demo").get_trials()
    states = {t.number: t.state.name for t in trials}
    # trial 1 failed by its stopped heartbeat and queued again as #3, which continued its run folder
    assert states == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE", 3: "COMPLETE"}, states
    assert trials[3].system_attrs["failed_trial"] == 1 and trials[3].params == trials[1].params
    rows = read_results_csv(folder / "trials" / "trial_001" / "results.csv")
    assert len(rows) == 2 and rows[0] == before[0]  # resumed from last.pt at epoch 1, not redone
    assert sorted(p.name for p in (folder / "trials").iterdir()) == ["trial_000", "trial_001", "trial_002"]


def _two_workers(tmp_path: Path, extra: list[str], trials: int = 4) -> list[str]:
    """Start two workers of one study together (each epoch paused 0.5 s so that they overlap) and wait."""
    args = ["--trials", str(trials), "--epochs", "2", "--project", str(tmp_path), "--study", "shared", *extra]
    procs = [subprocess.Popen(_tune(*args, fault="pause:0.5"), env=_env("pause:0.5"), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
        outputs.append(out)
    return outputs


def _workers_of(study: optuna.Study) -> set[str]:
    return {t.user_attrs["fgcli_worker"] for t in study.get_trials()}


@pytest.mark.slow
def test_two_workers_share_one_study_on_the_sqlite_file(tmp_path: Path) -> None:
    _two_workers(tmp_path, [])
    study = _study(f"sqlite:///{tmp_path / 'shared' / 'study.db'}", "shared")
    _check_each_trial_once(study, 4, 2)
    assert len(_workers_of(study)) == 2  # both took trials


def _postgres_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL cluster in a temp folder on a free local port (trust auth), stopped after the
    tests; run as an unprivileged user when the tests run as root (initdb refuses root)."""
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server programs (initdb, pg_ctl) not found: apt-get install postgresql")
    # under /tmp when root: the server's own user must be able to reach the folder
    folder = Path(tempfile.mkdtemp(prefix="fgcli-pg-", dir="/tmp" if os.geteuid() == 0 else None))
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
        if user is None or not shutil.which("runuser"):
            pytest.skip("running as root without a 'postgres' / 'nobody' user and runuser to start PostgreSQL")
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        as_user = ["runuser", "-u", user, "--"]
    data, port = folder / "data", _free_port()
    run = dict(capture_output=True, text=True, timeout=120, cwd=folder)
    init = subprocess.run([*as_user, initdb, "-D", str(data), "-U", "fgcli", "--auth=trust", "-E", "UTF8",
                           "--no-sync"], **run)
    assert init.returncode == 0, init.stdout + init.stderr
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "server.log"),
                            "-w", "-t", "60", "start"], **run)
    assert start.returncode == 0, start.stdout + start.stderr + _read(folder / "server.log")
    try:
        yield f"postgresql://fgcli@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], **run)
        shutil.rmtree(folder, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


@pytest.mark.slow
def test_two_workers_share_one_study_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    _two_workers(tmp_path, ["--storage", postgres_url])
    study = _study(postgres_url, "shared")
    _check_each_trial_once(study, 4, 2)
    assert len(_workers_of(study)) == 2
    assert not (tmp_path / "shared" / "study.db").exists()  # the study lives in the server
