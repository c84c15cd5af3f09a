"""Sweeps, the job side: each job's record on disk, failure isolation, threads per job.

Every job of a multirun leaves job.json in its directory (status, error, wall time, overrides), next to the
metrics.json a finished run writes; attnlab.summary makes the sweep's summary from those files only.

Imported by every run, before the slow imports: nothing heavy (torch, matplotlib) at the top.
"""

import contextlib
import io
import json
import multiprocessing
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from attnlab import signals
from attnlab.config import integer

JOB_FILE = "job.json"
METRICS_FILE = "metrics.json"  # written by attnlab.train.run


# ---- the sweep side ------------------------------------------------------------------------------------------------


def trials_in_study(storage: str | None, study_name: str | None) -> int:
    """How many trials the Optuna study `study_name` in `storage` holds already (0 where there is none yet): the
    seed of its sampler in conf/hparams_search/ (the resolver attnlab.trials_in_study). A study run again to add
    trials then draws new points, where a fixed seed drew the same ones again; and the same study history still
    gives the same new points. Two sweeps adding to one study at the same moment would draw alike."""
    if not storage or not study_name:  # a study of its own each time (in memory, or a generated name)
        return 0
    import optuna

    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:  # no such study yet: this sweep creates it
        return 0


OmegaConf.register_new_resolver("attnlab.trials_in_study", trials_in_study, replace=True)


# ---- the job side --------------------------------------------------------------------------------------------------


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def write_job_record(run_dir: Path, status: str, wall_s: float, error: str | None = None, code: int | None = None):
    hydra = HydraConfig.get()
    # The job's overrides as its .hydra/ has them: a job finished in place (-m resume=SWEEP_DIR) is launched with a
    # ckpt_path= more, which is not what the job is.
    own = run_dir / ".hydra" / "overrides.yaml"
    overrides = list(OmegaConf.load(own)) if own.is_file() else list(hydra.overrides.task)
    record = {
        "status": status,  # ok | failed | interrupted | not started
        "error": error,
        "exit_code": code,
        "wall_s": round(wall_s, 3),
        "job": hydra.job.num,
        "overrides": overrides,
    }
    run_dir.mkdir(parents=True, exist_ok=True)  # a job stopped by bad input has had its directory removed
    (run_dir / JOB_FILE).write_text(json.dumps(record, indent=2) + "\n")


class _Tee(io.TextIOBase):
    """stderr as it is, keeping a copy: the job's own one-line message is its error in the summary."""

    def __init__(self, stream):
        self.stream, self.text = stream, []

    def write(self, s: str) -> int:
        self.text.append(s)
        return self.stream.write(s)

    def flush(self) -> None:
        self.stream.flush()

    def last_line(self) -> str | None:
        lines = [line.strip() for line in "".join(self.text).splitlines() if line.strip()]
        return lines[-1].removeprefix("error: ") if lines else None


def isolated(train: Callable[[DictConfig], float], cfg: DictConfig, run_dir: Path) -> float | None:
    """Run one job of a sweep so that its failure does not end the sweep: whatever stops it (bad input, an
    exception, the entry point's sys.exit) is written to job.json and the job returns None, which the basic and
    joblib launchers pass over and the Optuna sweeper records as a failed trial. A signal (Ctrl-C, SIGTERM) stops
    the sweep (attnlab.signals): the running job saves its checkpoint and is recorded as interrupted, every job
    after it as not started, and the sweep ends with its summary."""
    signals.listen()  # from this job on, a signal to this process stops its job and lets it take no other
    if (signum := signals.received()) is not None and trained_outcome(run_dir) is None:  # (a stacked member began)
        why = f"the sweep was stopped by {signal.Signals(signum).name} before this job began"
        write_job_record(run_dir, "not started", 0.0, why)
        print(f"[sweep] job {HydraConfig.get().job.num} not started: {why}", file=sys.stderr)
        return None
    start = time.perf_counter()
    tee = _Tee(sys.stderr)
    try:
        with contextlib.redirect_stderr(tee):
            value = train(cfg)
    except SystemExit as stop:  # the entry point printed its one line, then exited
        code = stop.code if isinstance(stop.code, int) else 1
        signalled = code > 128
        write_job_record(run_dir, "interrupted" if signalled else "failed", time.perf_counter() - start,
                         tee.last_line() or f"exit code {code}", code)
        if signalled:  # it said so, and where its checkpoint is; the jobs after it will not start
            return None
        print(f"[sweep] job {HydraConfig.get().job.num} failed; the sweep goes on", file=sys.stderr)
        return None
    except Exception as error:  # unexpected: keep the traceback on the terminal, the message in job.json
        traceback.print_exc()
        message = f"{type(error).__name__}: {error}".splitlines()[0]
        write_job_record(run_dir, "failed", time.perf_counter() - start, message)
        print(f"[sweep] job {HydraConfig.get().job.num} failed; the sweep goes on", file=sys.stderr)
        return None
    write_job_record(run_dir, "ok", time.perf_counter() - start)
    return value


def resumed_alone(run_dir: Path, wall_s: float) -> None:
    """A sweep's job that resume=RUN_DIR went on with to the end, on its own: its job.json says so (ok), so that
    the sweep's summary and -m resume=SWEEP_DIR count it as finished."""
    record_file = run_dir / JOB_FILE
    if not record_file.is_file():
        return
    record = json.loads(record_file.read_text())
    record.update(status="ok", error=None, exit_code=None, wall_s=round(record.get("wall_s", 0.0) + wall_s, 3))
    record_file.write_text(json.dumps(record, indent=2) + "\n")


# Runs a stacked launcher (hydra_plugins/attnlab_stacked) has trained already, as members of a group: run_dir ->
# what attnlab.train.run returns (or raises) for it, and how long its group trained. The job's own entry point then
# finishes each as it finishes a run it trained itself: its messages, exit code and job.json.
_trained_elsewhere: dict[Path, tuple[Callable[[], dict], float]] = {}


@contextlib.contextmanager
def trained_elsewhere(run_dir: Path, outcome: Callable[[], dict], wall_s: float):
    """While the job of run_dir runs, train.run gives outcome() instead of training; wall_s: its group's training."""
    _trained_elsewhere[Path(run_dir).resolve()] = outcome, wall_s
    try:
        yield
    finally:
        _trained_elsewhere.pop(Path(run_dir).resolve(), None)


def trained_outcome(run_dir: Path) -> Callable[[], dict] | None:
    return _trained_elsewhere.get(Path(run_dir).resolve(), (None, None))[0]


def trained_wall(run_dir: Path) -> float | None:
    """Seconds the group of a stacked member trained for (shared by its members), or None for a run trained here."""
    return _trained_elsewhere.get(Path(run_dir).resolve(), (None, None))[1]


def torch_threads(cfg: DictConfig) -> int | None:
    """Threads for this job's torch ops: device.threads if set; else, in a sweep whose launcher runs jobs side by
    side, this machine's cores shared among them (joblib and stacked: hydra.launcher.n_jobs; submitit:
    hydra.launcher.cpus_per_task); else None (torch's default, one per core)."""
    if cfg.device.get("threads") is not None:
        return integer(cfg.device.threads, "device.threads")
    if not in_sweep():
        return None
    launcher = HydraConfig.get().launcher
    target = str(launcher.get("_target_", ""))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if "joblib" in target:
        n_jobs = launcher.get("n_jobs") or 1
        parallel = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)  # joblib: -1 all cores, -2 all but one
        return max(1, cores // parallel)
    if "stacked" in target and launcher.get("n_jobs"):
        return max(1, cores // launcher.n_jobs)
    if "submitit" in target and launcher.get("cpus_per_task"):
        return int(launcher.cpus_per_task)
    return None


@contextlib.contextmanager
def job_process(cfg: DictConfig):
    """This process set up for one run: torch's threads, and its training processes' (ddp_spawn: they read
    OMP_NUM_THREADS when they start, and share the job's threads), put back after, since the next job of a sweep
    may run in this same process."""
    # A joblib (loky) worker sets multiprocessing's start method to "loky", which the processes that ddp_spawn
    # starts cannot look up ("cannot find context for 'loky'"); they need only the standard one.
    if multiprocessing.get_start_method(allow_none=True) == "loky":
        multiprocessing.set_start_method("spawn", force=True)
    threads = torch_threads(cfg)
    if threads is None:
        yield
        return
    import torch

    devices = cfg.device.devices
    processes = devices if cfg.device.get("strategy", "auto") != "auto" and isinstance(devices, int) else 1
    before_torch, before_env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(max(1, threads // processes))
    try:
        yield
    finally:
        torch.set_num_threads(before_torch)
        if before_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before_env
