"""One worker of a study: take the next queued trial, run it with a heartbeat, tell the storage how it ended.

Several workers (processes, machines) share a study through its storage: a queued trial is taken by exactly
one of them (an atomic WAITING -> RUNNING update), so with `--trials N` the study runs N trials whatever the
number of workers. A worker killed mid-trial stops its heartbeat; any worker then fails that trial and the
storage queues it again (Optuna's RetryHeartbeatStaleTrialCallback), and the retry continues from the trial's
own last.pt. Ctrl-C does the same at once.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from fgcli.console import log
from fgcli.errors import UserError
from fgcli.tuning.storage import origin_of

#: consecutive failed trials after which the study stops (a broken setup, not a bad point of the space)
MAX_FAILURES = 3


class Heartbeat:
    """Record the trial's heartbeat every `interval` s in a thread, while the block runs."""

    def __init__(self, storage: Any, trial_id: int, interval: int) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="fgcli-heartbeat")

    def _beat(self) -> None:
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as e:  # a storage hiccup: the next beat tries again
                log.debug(f"heartbeat of trial id {self.trial_id} not recorded: {e}")
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def take_queued(storage: Any, study_id: int) -> int | None:
    """Atomically take (WAITING -> RUNNING) the first queued trial, an interrupted trial queued again before any
    new one (it resumes first, and the trials after it draw from the same history as without the interruption);
    its id, or None when none is left."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    waiting = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,))
    for frozen in sorted(waiting, key=lambda t: (origin_of(t) == t.number, t.number)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                return trial_id
        except UpdateFinishedTrialError:  # another worker took and finished it meanwhile
            continue
    return None


def fail_stale(study: Any) -> None:
    """Fail the trials whose worker stopped beating (killed) and queue them again."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def work(study: Any, storage: Any, run: Callable[[Any, Any], float], *, slots: bool, deadline: float | None,
         heartbeat: int, sampler_for: Callable[[int], Any] | None = None) -> int:
    """Run trials until the queue is empty and no other worker's trial is left running (`slots`: --trials),
    or, with a budget only, until `deadline` (time.monotonic()); a trial running at the deadline finishes.
    `run(trial, frozen)` returns the trial's value or raises optuna.TrialPruned. `sampler_for(number)`: the
    sampler that draws trial `number`'s values (a fresh one per trial, so a resumed study draws what an
    uninterrupted one would). Returns the trials run here."""
    import optuna
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    done = failures = 0
    said_waiting = False
    while deadline is None or time.monotonic() < deadline:
        fail_stale(study)
        trial_id = take_queued(storage, study_id)
        if trial_id is None and not slots:
            trial_id = storage.create_new_trial(study_id)
        if trial_id is None:
            running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
            if not running:
                return done
            if not said_waiting:
                log.info(f"no queued trial left; waiting for trial(s) {', '.join(f'#{t.number}' for t in running)} "
                         f"running in other workers (one that stops beating for {3 * heartbeat} s is resumed here)")
                said_waiting = True
            time.sleep(heartbeat)
            continue
        said_waiting = False
        if sampler_for is not None:
            study.sampler = sampler_for(storage.get_trial(trial_id).number)
        ok = _run_one(study, storage, optuna.Trial(study, trial_id), trial_id, run, heartbeat, failures)
        done += 1
        failures = 0 if ok else failures + 1
    log.info("the --budget is spent: no new trial is started")
    return done


def _run_one(study: Any, storage: Any, trial: Any, trial_id: int, run: Callable[[Any, Any], float],
             heartbeat: int, failures: int) -> bool:
    """Run one trial and tell the storage; False when it failed. A failure of the first trial (the recipe as
    given) or the MAX_FAILURES-th in a row is raised: the setup is broken, not a point of the space."""
    import optuna
    from optuna.trial import TrialState

    frozen = storage.get_trial(trial_id)
    try:
        with Heartbeat(storage, trial_id, heartbeat):
            value = run(trial, frozen)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
        return True
    except KeyboardInterrupt:
        requeue(study, storage, trial_id)
        log.warning(f"Interrupted: trial #{trial.number} is queued again and continues from its last.pt when the "
                    "same command runs again.")
        raise
    except Exception as e:
        message = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        trial.set_user_attr("fgcli_error", message[:500])
        study.tell(trial, state=TrialState.FAIL)
        if frozen.user_attrs.get("fgcli_origin") == "recipe" or failures + 1 >= MAX_FAILURES:
            raise
        log.warning(f"trial #{trial.number} failed ({message}); the study goes on")
        return False
    study.tell(trial, value)
    return True


def requeue(study: Any, storage: Any, trial_id: int) -> None:
    """Fail a running trial and queue it again (the same parameters; it resumes from its last.pt)."""
    from optuna.trial import TrialState

    storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    callback = storage.get_heartbeat_stale_trial_callback()
    if callback is not None:
        callback(study, storage.get_trial(trial_id))
