"""Running a study's trials from one or several processes, each trial told exactly once.

A worker repeats: take the study's claim lock (a file lock next to the study, so the processes of
one machine never both start the last trial), recover trials whose worker died, stop when the
study has its number of trials, else ask for a trial; then run it outside the lock and tell the
result. A trial's failure (EffdlError, NaN loss, a bad combination's RuntimeError) is recorded on
the trial (user attribute `error`) and the worker goes on.

Killed workers (the documented mechanism, for the journal file and database storages alike): a
running trial records its worker's host and process id and refreshes a heartbeat every
HEARTBEAT_S seconds. A RUNNING trial is dead when its process is gone (same host) or its heartbeat
is older than STALE_S (another host); the next worker to claim a trial, or `--resume`, marks it
FAIL (error "worker died") and enqueues its parameters again, up to `retries` times.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from effdl.errors import EffdlError

HEARTBEAT_S = 20.0
STALE_S = 300.0
LOCK_NAME = "claim.lock"


@contextlib.contextmanager
def claim_lock(study_dir: Path):
    """An exclusive lock for the processes of this machine that work on the study."""
    study_dir.mkdir(parents=True, exist_ok=True)
    with open(study_dir / LOCK_NAME, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def counted_trials(study: Any) -> list[Any]:
    """The trials that count towards the study's total: all but the failed ones that were retried."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False)
            if not (t.state == TrialState.FAIL and t.user_attrs.get("retried"))]


def recover_dead_trials(study: Any, retries: int) -> list[int]:
    """Mark RUNNING trials whose worker died as FAIL and enqueue them again (module docstring).

    Returns the numbers of the trials recovered."""
    from optuna.trial import TrialState

    host, now, recovered = socket.gethostname(), time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = t.user_attrs
        if "worker_pid" not in attrs:
            continue  # not started by a worker of ours (or not yet tagged): leave it
        same_host = attrs.get("worker_host") == host
        dead = (not _alive(int(attrs["worker_pid"]))) if same_host else now - float(attrs.get("heartbeat", now)) > STALE_S
        if not dead:
            continue
        attempts = int(attrs.get("attempt", 1))
        retry = attempts <= retries
        study._storage.set_trial_user_attr(t._trial_id, "error", f"worker died (pid {attrs['worker_pid']} on "
                                           f"{attrs.get('worker_host')})" + ("; retried" if retry else ""))
        study._storage.set_trial_user_attr(t._trial_id, "retried", retry)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if retry:
            study.enqueue_trial(dict(t.params), user_attrs={"attempt": attempts + 1, "retry_of": t.number},
                                skip_if_exists=False)
        recovered.append(t.number)
    return recovered


class _Heartbeat:
    def __init__(self, study: Any, trial: Any):
        self.study, self.trial = study, trial
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a missed beat only delays nothing: it is a liveness hint
                self.study._storage.set_trial_user_attr(self.trial._trial_id, "heartbeat", time.time())

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()


def error_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text[:300] if isinstance(exc, EffdlError) else f"{type(exc).__name__}: {text[:300]}"


def run_trials(study: Any, study_dir: Path, target: int, objective: Callable[[Any], Any], *,
               retries: int = 1, distributions: dict[str, Any] | None = None,
               say: Callable[[str], None] = print) -> int:
    """Ask, run and tell trials of `study` until it holds `target` counted trials (module docstring).

    `objective(trial)` returns the value(s) or raises optuna.TrialPruned (recorded PRUNED) or an
    error (recorded FAIL, the loop goes on); KeyboardInterrupt marks the trial FAIL and propagates.
    `distributions` are passed to `study.ask` (fixed search spaces). Returns the trials run here.
    """
    import optuna
    from optuna.trial import TrialState

    ran = 0
    while True:
        with claim_lock(study_dir):
            recover_dead_trials(study, retries)
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if not waiting and len(counted_trials(study)) >= target:
                return ran
            trial = study.ask(distributions)
            trial.set_user_attr("worker_host", socket.gethostname())
            trial.set_user_attr("worker_pid", os.getpid())
            trial.set_user_attr("heartbeat", time.time())
        ran += 1
        try:
            with _Heartbeat(study, trial):
                values = objective(trial)
        except optuna.TrialPruned as exc:
            trial.set_user_attr("pruned", str(exc) or "pruned")
            study.tell(trial, state=TrialState.PRUNED)
            say(f"trial {trial.number}: pruned {str(exc)}".rstrip())
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted")
            study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as exc:  # a bad combination or a NaN: recorded, the study goes on
            trial.set_user_attr("error", error_line(exc))
            study.tell(trial, state=TrialState.FAIL)
            say(f"trial {trial.number}: failed: {error_line(exc)}")
        else:
            study.tell(trial, values)
            shown = ", ".join(f"{v:.4g}" for v in values) if isinstance(values, (list, tuple)) else f"{values:.4g}"
            say(f"trial {trial.number}: {shown}")
