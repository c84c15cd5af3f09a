"""Ctrl+C and `kill` (SIGINT, SIGTERM: a user's, a scheduler's pre-emption), handled alike in every process of a
run or a sweep. The first signal asks for a stop at the next safe point; a second Ctrl+C stops at once, unsaved.

- In training (guards.StopOnSignal): after the current step, with a checkpoint.
- In a process that runs a sweep's jobs (sweep.isolated from its first job on; a joblib worker from its start): a
  job that has not begun does not begin, and says so in its job.json.
- In a sweep's own process (SweepSignals below): the stop is passed on to its worker processes, and the sweep ends
  as a finished one does, with its summary, once the running jobs have saved; then scripts/train.py exits with
  128 + the signal's number, the shell's convention.

Python's default for SIGTERM is to end the process at once: a joblib sweep's own process died and left its workers
behind, one of which took the next job and trained on, with nobody to collect its result.

Imported by Hydra's callbacks and by each joblib worker as it starts: nothing heavy."""

import contextlib
import multiprocessing
import os
import signal
import sys
import threading

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # the signals this process received, in order
_message: str | None = None  # what this process prints on the first one (listen)


def received() -> int | None:
    """The signal that asked this process to stop, if one has."""
    return _received[0] if _received else None


def note(signum: int) -> bool:
    """Record `signum`; True where it must stop at once: a second SIGINT (Ctrl+C pressed again). Anything else after
    the first signal asks for nothing new: a sweep's process passes a Ctrl+C on to its workers as SIGTERM, which may
    reach a worker before or after the Ctrl+C itself."""
    again = signum == signal.SIGINT and signal.SIGINT in _received
    _received.append(signum)
    return again


def _handle(signum: int, frame) -> None:
    first = not _received
    if note(signum):
        raise KeyboardInterrupt
    if not first:
        return
    if _message:
        print(f"\n{signal.Signals(signum).name} received: {_message}", file=sys.stderr, flush=True)
    tell_children()


def tell_children() -> None:
    """SIGTERM to the worker processes this one started (a joblib or stacked sweep's): they had the signal too when
    the whole process group got it (Ctrl+C, a scheduler); not when only this process did (`kill PID`)."""
    for child in multiprocessing.active_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGTERM)


def listen(message: str | None = None) -> None:
    """From now on a signal asks this process to stop (as above) instead of ending it; `message` is printed on the
    first one (the one given first is kept). Only the main thread can set handlers: elsewhere this does nothing."""
    global _message
    _message = _message or message
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, _handle)


def _joblib_workers_listen() -> None:
    """Each of joblib's (loky) workers listens from its start: loky runs an `initializer` in each as it starts. A
    worker idle when the signal came would otherwise end, which loky takes for a crash: it kills the other workers
    at once (SIGKILL), in the middle of saving their jobs' checkpoints. The Hydra launcher names its backend
    "loky", so the subclass is registered under that name."""
    import joblib
    from joblib.parallel import BACKENDS

    if getattr(BACKENDS["loky"], "workers_listen", False):
        return

    class ListeningLoky(BACKENDS["loky"]):
        workers_listen = True

        def configure(self, *args, **kwargs):
            return super().configure(*args, initializer=listen, **kwargs)

    joblib.register_parallel_backend("loky", ListeningLoky)


class SweepSignals(Callback):
    """Hydra callback (conf/train.yaml, hydra.callbacks): a sweep's own process stops its sweep on a signal as
    described above, under any launcher (basic: the jobs run in this process; joblib: in workers; submitit: in
    processes of their own, which the process group's signal reaches)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        listen("the running jobs stop after their current step and save a checkpoint; no new job starts"
               " (Ctrl+C again stops at once, without saving)")
        if "joblib" in str(config.hydra.launcher.get("_target_", "")):
            _joblib_workers_listen()
