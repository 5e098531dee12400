"""Where a study lives: an Optuna RDB storage (SQLite file in the tune folder by default, or any URL Optuna
takes, e.g. PostgreSQL for several machines), with heartbeats so that a killed worker's trial is failed and
queued again; and the study itself, created once with its first trial and its trial slots, or loaded and
checked against the method and space it was made for."""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgcli.console import log
from fgcli.errors import UserError

#: a trial killed this many times (or interrupted) is not queued again
MAX_RETRY = 3
#: the study's user attributes (all of them prefixed, so that other tools' attributes never clash)
ATTR = "fgcli_"


def origin_of(frozen: Any) -> int:
    """The number of the trial that `frozen` continues (itself when it is no retry): the storage's retry
    callback records it as the system attribute `failed_trial` (RetryHeartbeatStaleTrialCallback's
    `retried_trial_number`, read here directly to keep its experimental-API warning off the console)."""
    origin = frozen.system_attrs.get("failed_trial")
    return frozen.number if origin is None else int(origin)


def default_url(tune_dir: Path) -> str:
    """The SQLite file of a tune folder."""
    return f"sqlite:///{(tune_dir / 'study.db').resolve()}"


def redact(url: str) -> str:
    """`url` without its password (for messages)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def open_storage(url: str, heartbeat: int) -> Any:
    """An RDBStorage with heartbeats every `heartbeat` s; a trial silent for 3x that is taken as killed,
    failed and queued again (up to MAX_RETRY times). One UserError when the URL cannot be used."""
    scheme = url.split("://", 1)[0].split("+")[0]
    try:
        return _open(url, scheme, heartbeat)
    except UserError:
        raise
    except Exception as e:  # sqlalchemy's OperationalError / ArgumentError, a bad port, a missing driver
        raise _connect_error(url, scheme, e) from None


def _open(url: str, scheme: str, heartbeat: int) -> Any:
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    where = f"--storage {redact(url)}"
    if "://" not in url:
        raise UserError(f"{where} is not a database URL: give e.g. sqlite:///study.db or "
                        "postgresql://user:password@host:5432/db.")
    url = _with_driver(url, scheme)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if scheme == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": 60}  # several local workers queue for the write lock
    elif scheme in ("postgresql", "mysql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    attempt = 0
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                                  grace_period=3 * heartbeat,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
        except ImportError:
            raise
        except Exception as e:  # new workers on several machines creating the tables at once: retry
            attempt += 1
            if attempt > 3 or not any(s in str(e) for s in ("already exists", "duplicate key")):
                raise
            time.sleep(attempt)


def _with_driver(url: str, scheme: str) -> str:
    """SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; with only psycopg2 installed (the `postgres`
    extra), name that driver instead."""
    import importlib.util

    if not url.startswith("postgresql://") or importlib.util.find_spec("psycopg") is not None:
        return url
    if importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def _connect_error(url: str, scheme: str, e: BaseException) -> UserError:
    where = f"--storage {redact(url)}"
    if isinstance(e, ImportError):
        extra = ' (pip install "fgcli[postgres]")' if scheme == "postgresql" else ""
        return UserError(f"{where}: its database driver is not installed{extra} ({e}).")
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return UserError(f"{where} cannot be reached ({type(e).__name__}: {first}). Check the URL, that the server "
                     "runs and that this machine may connect to it.")


@dataclass
class StudySpec:
    """What a study is made for; a study of that name made for anything else is refused."""

    name: str
    method: str
    space: list[dict[str, Any]]
    start: dict[str, Any]  # trial 0's parameters (encoded)
    slots: int | None  # --trials (None: only a --budget)
    fixed: dict[str, Any] = field(default_factory=dict)  # the starting config's other keys (flat), as JSON


def open_study(storage: Any, spec: StudySpec, sampler: Any, pruner: Any, lock_dir: Path) -> Any:
    """Create the study with its first trial (the recipe) and `slots - 1` more queued, or load it and check
    that it was made for the same method and space (then add slots if --trials grew)."""
    import optuna

    from fgcli.data.locking import folder_lock

    with folder_lock(lock_dir):  # workers on this machine: one creates, the others load
        try:
            study = optuna.create_study(storage=storage, study_name=spec.name, direction="maximize",
                                        sampler=sampler, pruner=pruner)
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner)
            _wait_ready(study, spec)
            _check_same(study, spec, storage)
            _add_slots(study, spec)
            return study
        study.set_user_attr(ATTR + "method", spec.method)
        study.set_user_attr(ATTR + "space", spec.space)
        study.set_user_attr(ATTR + "fixed", spec.fixed)
        study.enqueue_trial(spec.start, user_attrs={ATTR + "origin": "recipe"})
        for _ in range((spec.slots or 1) - 1):
            study.enqueue_trial({})
        study.set_user_attr(ATTR + "slots", spec.slots)
        study.set_user_attr(ATTR + "ready", True)  # workers on other machines wait for this
        return study


def _wait_ready(study: Any, spec: StudySpec, timeout: float = 120.0) -> None:
    """Wait while a worker on another machine is still queuing the study's trials."""
    start = time.monotonic()
    while not study.user_attrs.get(ATTR + "ready"):
        waited = time.monotonic() - start
        if ATTR + "method" not in study.user_attrs and waited > 10:
            raise UserError(f"study '{spec.name}' exists but was not made by fgcli tune; pass another --study.")
        if waited > timeout:
            raise UserError(f"study '{spec.name}' is still being set up by another worker after {timeout:.0f} s; "
                            "rerun the command.")
        time.sleep(1.0)


def _check_same(study: Any, spec: StudySpec, storage: Any) -> None:
    """Refuse a study made for another method, space or fixed settings (its trials would not compare)."""
    attrs = study.user_attrs
    method = attrs.get(ATTR + "method")
    where = f"study '{spec.name}' in {redact(storage.url)}"
    if method != spec.method:
        raise UserError(f"{where} was made for method {method}, not {spec.method}; pass another --study (or "
                        "--name) to start a new one.")
    for what, old_items, new_items in (
            ("search space", {d["key"]: d for d in attrs.get(ATTR + "space") or []}, {d["key"]: d for d in spec.space}),
            ("fixed settings", attrs.get(ATTR + "fixed") or {}, spec.fixed)):
        diff = sorted(k for k in set(old_items) | set(new_items) if old_items.get(k) != new_items.get(k))
        if diff:
            raise UserError(f"{where} was made with another {what} (differs in {', '.join(diff[:6])}"
                            f"{', ...' if len(diff) > 6 else ''}); rerun with the same recipe, --space and flags "
                            "to resume it, or pass another --study to start a new one.")


def _add_slots(study: Any, spec: StudySpec) -> None:
    """Queue more trials when --trials grew since the study was made (or when a --budget-only study gets one)."""
    from optuna.trial import TrialState

    if spec.slots is None:
        return
    had = study.user_attrs.get(ATTR + "slots")
    if had is None:  # made with --budget only: count the trials it has run or queued
        had = sum(1 for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL)
    if spec.slots < had:
        log.info(f"study '{spec.name}' has {had} trials planned; --trials {spec.slots} does not remove any")
    for _ in range(spec.slots - had):
        study.enqueue_trial({})
    if spec.slots > had:
        log.info(f"study '{spec.name}': {spec.slots - had} trials added ({had} -> {spec.slots})")
    study.set_user_attr(ATTR + "slots", max(spec.slots, had))
