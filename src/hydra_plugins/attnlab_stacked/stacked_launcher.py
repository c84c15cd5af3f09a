"""The stacked launcher: jobs of a sweep that differ only in what a member may differ in (seed, optim.*, stop_at:
attnlab.stacked.MEMBER_KEYS) are trained together as one stacked model.

The groups are shared out among hydra.launcher.n_jobs workers (default: the machine's cores divided by a group's
threads; on GPUs, one worker per GPU): `shares` splits the sweep's work, members x steps, into one even share per
worker, cutting a group into sub-groups where it is larger than a share, and each worker trains its share's groups
one after another, each a stacked model. The first worker is the sweep's own process, each other one a process of
its own (loky, as joblib's launcher starts its workers). With one worker (n_jobs=1, or a sweep too small to split)
everything is trained in the sweep's process, one group after another.

Each job is still a Hydra job of its own: its config composed by Hydra's config loader, its directory and .hydra/
made as run_job makes them, and its task function (scripts/train.py's main) called through run_job, so it ends
exactly as a run trained by itself ends (its messages, exit code, job.json, the value it returns to a sweeper). What
differs is only where its training happened: its group trained it first (attnlab.stacked.train_group), and while
its task function runs, attnlab.train.run hands back what that training gave for it (attnlab.sweep.trained_elsewhere).

Jobs whose config is refused are launched as they are (they stop at config time with their one line, in their
job.json); jobs that cannot be members (stacked.refusal: a checkpoint to go on from, solo-only trainer options)
and groups of one are trained alone, as the basic launcher would.

Imported by Hydra whenever it looks for plugins: torch and Lightning only once jobs are launched.
"""

import atexit
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, _save_config, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from attnlab.config import ConfigError, integer

log = logging.getLogger(__name__)

# What cannot be stacked at all: a member is one slice of one process's model.
REFUSED_DEVICES = ("cpu_ddp", "gpu_ddp")


def refuse(message: str, sweep_dir: Path) -> None:
    """Bad input for the launcher itself: one line, exit 2, and no sweep directory left (the sweeper has written
    only its multirun.yaml there)."""
    print(f"error: {message}", file=sys.stderr)
    if sweep_dir.is_dir() and {p.name for p in sweep_dir.iterdir()} <= {"multirun.yaml"}:
        for leftover in sweep_dir.iterdir():
            leftover.unlink()
        sweep_dir.rmdir()
    sys.exit(2)


def console_logging(job_logging: DictConfig) -> DictConfig:
    """The jobs' logging without its log files: how a group's Lightning notices reach the console while it trains,
    as a solo run's do (each once, no advertisement), before each member's job writes its own log file."""
    setup = OmegaConf.to_container(job_logging, resolve=False)
    files = [name for name, handler in setup.get("handlers", {}).items() if "filename" in handler]
    for name in files:
        del setup["handlers"][name]
    if "root" in setup:
        setup["root"]["handlers"] = [h for h in setup["root"].get("handlers", []) if h not in files]
    return OmegaConf.create(setup)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def shares(units: list[tuple[list[int], int]], workers: int, max_members: int) -> list[list[list[int]]]:
    """The sweep's work split into at most `workers` even shares, each a list of pieces trained one after another:
    a piece of several jobs is one stacked model, a piece of one is trained alone.

    units: jobs that may be stacked together (a group; or one job trained alone), and the steps each trains. A job's
    work is its steps, a group's its members x steps: members are cut from the sweep's units in order, each into the
    share that holds the middle of its work (McNaughton's wrap-around rule), so that each share is within one
    member's work of an even split and a group is cut only where a share ends. Within a share a group is cut again
    into pieces of at most `max_members`. Shares left empty (fewer jobs than workers) are dropped."""
    total = sum(len(jobs) * steps for jobs, steps in units)
    per_worker = total / workers
    cut: list[dict[int, list[int]]] = [{} for _ in range(workers)]  # share -> unit -> its members there
    done = 0
    for u, (jobs, steps) in enumerate(units):
        for job in jobs:
            share = min(workers - 1, int((done + steps / 2) // per_worker)) if per_worker else 0
            cut[share].setdefault(u, []).append(job)
            done += steps
    return [[part[s : s + max_members] for part in share.values() for s in range(0, len(part), max_members)]
            for share in cut if share]


def gpu_of(gpus: list[str], worker: int) -> Optional[str]:
    """The GPU of worker `worker` (0: the sweep's own process, whose device 0 is the first of `gpus`), or None."""
    return gpus[worker % len(gpus)] if gpus else None


def worker_start() -> None:
    """A worker process as it starts: it listens for signals from now on (attnlab.signals), so that one idle when the
    sweep is stopped lives on to say its jobs did not start; then it imports torch and Lightning with Python's
    garbage collector paused, as scripts/train.py does (collector_paused), before its first share arrives."""
    import gc

    from attnlab import signals

    signals.listen()
    # Lightning, imported where the root logger has no handler, gives its loggers console handlers of their own
    # that pass nothing on: the group's notices would skip the jobs' logging (each once, no advertisement). A
    # placeholder while it is imported, as the jobs' logging is in place when scripts/train.py imports it.
    root, placeholder = logging.getLogger(), logging.NullHandler()
    root.addHandler(placeholder)
    gc.disable()
    try:
        import attnlab.stacked  # noqa: F401
    finally:
        gc.freeze()
        gc.enable()
        root.removeHandler(placeholder)


def train_share(launcher: "StackedLauncher", singleton_state: dict, configs: dict[int, DictConfig],
                pieces: list[list[int]], worker: str) -> dict[int, JobReturn]:
    """A worker process's share of the sweep (its pieces, one after another), as the launcher's own process trains
    one: Hydra's state as the sweep's process has it, then StackedLauncher.train_pieces. Runs in a worker (loky, as
    joblib's launcher runs its jobs): each job's JobReturn goes back to the sweep's process."""
    setup_globals()
    Singleton.set_state(singleton_state)
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    runs: dict[int, JobReturn] = {}
    launcher.train_pieces(configs, pieces, runs, worker)
    return runs


class StackedLauncher(Launcher):
    def __init__(self, max_members: int = 64, threads: Optional[int] = None, n_jobs: Optional[int] = None) -> None:
        self.max_members, self.threads, self.n_jobs = max_members, threads, n_jobs
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None
        # One single-process pool per worker, kept from one launch to the next (Optuna's batches of trials find
        # their workers started, torch imported) and shut down as the sweep's process ends. A pool of one each, not
        # one pool of n_jobs: worker i is the process of pool i, so its environment names its GPU.
        self.pools: dict[tuple[int, str], object] = {}

    def __getstate__(self) -> dict:  # the launcher as a worker gets it: without the pools
        return {**self.__dict__, "pools": {}}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    # -- Hydra's side of a job, as run_job does it

    def job_config(self, overrides: Sequence[str], idx: int) -> DictConfig:
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        return config

    @staticmethod
    def output_dir(config: DictConfig) -> Path:
        """The job's directory, as run_job names it (its subdir may use ${hydra:...}: resolved with the job's own
        HydraConfig)."""
        HydraConfig.instance().set_config(config)
        subdir = str(OmegaConf.select(config, "hydra.sweep.subdir"))
        return Path(os.path.abspath(os.path.join(str(OmegaConf.select(config, "hydra.sweep.dir")), subdir)))

    @staticmethod
    def task_config(config: DictConfig) -> DictConfig:
        HydraConfig.instance().set_config(config)
        task = OmegaConf.create(OmegaConf.to_container(config, resolve=False))
        with read_write(task), open_dict(task):
            del task["hydra"]
        return task

    def save_hydra_dir(self, config: DictConfig, run_dir: Path) -> None:
        """.hydra/ as run_job writes it, before training: a member's directory is a run directory from the start
        (resume=RUN_DIR finds its config even if the process is killed mid-group). run_job writes the same again."""
        HydraConfig.instance().set_config(config)
        hydra = OmegaConf.create(OmegaConf.to_container(config.hydra, resolve=False))
        with read_write(hydra), open_dict(hydra):
            hydra.runtime.output_dir = str(run_dir)
        if config.hydra.output_subdir is not None:
            out = run_dir / str(config.hydra.output_subdir)
            _save_config(self.task_config(config), "config.yaml", out)
            _save_config(OmegaConf.create({"hydra": hydra}), "hydra.yaml", out)
            _save_config(config.hydra.overrides.task, "overrides.yaml", out)

    def run(self, config: DictConfig) -> JobReturn:
        return run_job(
            hydra_context=self.hydra_context, task_function=self.task_function, config=config,
            job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir",
        )

    # -- the sweep

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        try:
            integer(self.max_members, "hydra.launcher.max_members")
            if self.threads is not None:
                integer(self.threads, "hydra.launcher.threads")
            if self.n_jobs is not None:
                integer(self.n_jobs, "hydra.launcher.n_jobs")
        except ConfigError as error:
            refuse(str(error), sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        configs = [self.job_config(o, initial_job_idx + i) for i, o in enumerate(job_overrides)]
        for config in configs:
            device = config.hydra.runtime.choices.get("device")
            if device in REFUSED_DEVICES or config.device.get("strategy", "auto") != "auto":
                refuse(f"device={device}: hydra/launcher=stacked trains a group's members in one process (allowed: "
                       "device=auto, cpu, gpu or mps); launch multi-process runs with the basic, joblib or slurm "
                       "launcher", sweep_dir)

        gpus = self.gpus(configs)
        workers = self.n_jobs or self.default_workers(configs, gpus)
        for w in range(1, min(workers, len(configs))):  # started now: their imports overlap this process's own
            self.pool(w, gpu_of(gpus, w)).submit(int)

        from attnlab import stacked  # torch and Lightning: seconds, so only now

        groups: dict[str, list[int]] = {}
        alone: list[tuple[int, str]] = []  # refused at config time (they stop with their line), or trained alone
        for i, config in enumerate(configs):
            task = self.task_config(config)  # with HydraConfig set to this job's: group_key resolves ${hydra:...}
            reason = stacked.refusal(task)
            if reason is None:
                groups.setdefault(stacked.group_key(task), []).append(i)
            else:
                alone.append((i, reason))
        # The work: every member's steps; a job refused at config time (stacked.refusal's "refused: ...") stops at
        # once, and its max_steps may be what was refused.
        units = [([i], 0 if reason.startswith("refused") else configs[i].trainer.max_steps) for i, reason in alone]
        units += [(jobs, configs[jobs[0]].trainer.max_steps) for jobs in groups.values()]
        plan = shares(units, workers, self.max_members)
        log.info(f"Stacked launcher: {len(configs)} jobs, at most {self.max_members} members per model, "
                 f"{len(plan)} worker{'s' if len(plan) > 1 else ''} (n_jobs={workers})")
        for i, reason in alone:
            log.info(f"\t#{configs[i].hydra.job.num} alone ({reason}): "
                     f"{' '.join(filter_overrides(configs[i].hydra.overrides.task))}")
        singles = {i for i, _ in alone}
        for i in (p[0] for share in plan for p in share if len(p) == 1 and p[0] not in singles):
            log.info(f"\t#{configs[i].hydra.job.num} alone (a group of one): "
                     f"{' '.join(filter_overrides(configs[i].hydra.overrides.task))}")

        runs: list[Optional[JobReturn]] = [None] * len(configs)
        if len(plan) <= 1:  # one worker: this process trains it all, as the basic launcher trains its jobs
            self.train_pieces(dict(enumerate(configs)), plan[0] if plan else [], runs, "")
            return runs
        self.in_workers(configs, plan, gpus, runs)
        return runs

    def gpus(self, configs: list[DictConfig]) -> list[str]:
        """The GPUs the sweep's jobs train on (device=gpu, or device=auto where CUDA is found), as
        CUDA_VISIBLE_DEVICES names them; none for jobs on the CPU."""
        import torch

        accelerators = {str(c.device.accelerator) for c in configs}
        if "gpu" not in accelerators and not ("auto" in accelerators and torch.cuda.is_available()):
            return []
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return visible.split(",") if visible else [str(k) for k in range(torch.cuda.device_count())]

    def default_workers(self, configs: list[DictConfig], gpus: list[str]) -> int:
        """n_jobs unset: one worker per GPU (one for Apple's one MPS device); on the CPU the cores divided by a group's
        threads (hydra.launcher.threads, else its jobs' device.threads; null, torch's one per core, leaves one)."""
        if gpus:
            return len(gpus)
        if any(c.device.accelerator == "mps" for c in configs):
            return 1
        threads = self.threads or configs[0].device.get("threads")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:  # null, or refused in its job
            threads = cores()
        return max(1, cores() // threads)

    def pool(self, worker: int, gpu: Optional[str]):
        """Worker `worker`'s process (a loky pool of one), started on first use (worker_start)."""
        from joblib.externals.loky import ProcessPoolExecutor

        key = (worker, gpu or "")
        if key not in self.pools:
            if not self.pools:
                atexit.register(self.close)
            env = {"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else None
            self.pools[key] = ProcessPoolExecutor(max_workers=1, initializer=worker_start, env=env)
        return self.pools[key]

    def close(self) -> None:
        for pool in self.pools.values():
            pool.shutdown(wait=True)
        self.pools.clear()

    def in_workers(self, configs: list[DictConfig], plan: list[list[list[int]]], gpus: list[str], runs: list) -> None:
        """The shares side by side: the first in this process, which has made torch's and Lightning's imports
        already (a worker started for it would make them again: seconds of CPU and some 450 MB), each other one in a
        worker process of its own. A worker that dies (killed, out of memory) fails the jobs of its share that it had
        not finished, each in its job.json; the others go on."""
        from attnlab import signals

        state, began = Singleton.get_state(), time.time()
        gpu = gpu_of(gpus, 0)
        log.info(f"\tworker 1 (this process{'' if gpu is None else f', GPU {gpu}'}): {self.describe(configs, plan[0])}")
        futures = {}
        for w, share in enumerate(plan[1:], start=1):
            gpu = gpu_of(gpus, w)
            log.info(f"\tworker {w + 1}{'' if gpu is None else f' on GPU {gpu}'}: {self.describe(configs, share)}")
            jobs = {i: configs[i] for piece in share for i in piece}
            futures[w, gpu] = self.pool(w, gpu).submit(train_share, self, state, jobs, share, f"worker {w + 1}: ")
        try:
            self.train_pieces(dict(enumerate(configs)), plan[0], runs, "worker 1: ")
        finally:
            # A signal that stopped this process's training reached its StopOnSignal, which passes it on to no one:
            # the workers are told here (they had it too where the whole process group got it).
            if signals.received() is not None:
                signals.tell_children()
        for (w, gpu), future in futures.items():
            try:
                runs_of_share = future.result()
            except Exception as error:  # the worker's process itself failed: its pool is broken, made anew next time
                self.pools.pop((w, gpu or ""), None)
                log.error(f"worker {w + 1} failed: {type(error).__name__}: {error}")
                runs_of_share = {}
                for i in (i for piece in plan[w] for i in piece):
                    run_dir = self.output_dir(configs[i])
                    record = run_dir / "job.json"  # one from before this launch: a stopped sweep being finished
                    if not record.is_file() or record.stat().st_mtime < began:
                        runs_of_share[i] = self.finish(configs[i], run_dir, error, 0.0)
            for i, ret in runs_of_share.items():
                runs[i] = ret

    @staticmethod
    def describe(configs: list[DictConfig], share: list[list[int]]) -> str:
        pieces = [f"{len(p)} x {configs[p[0]].trainer.max_steps} steps ("
                  f"{', '.join(f'#{configs[i].hydra.job.num}' for i in p)})" for p in share]
        return ", then ".join(pieces)

    def train_pieces(self, configs: dict[int, DictConfig], pieces: list[list[int]], runs, worker: str) -> None:
        """A share's pieces, in this process, one after another: a job alone through run_job, as the basic launcher
        runs it; a group as one stacked model."""
        from attnlab import signals, stacked

        groups = [p for p in pieces if len(p) > 1]
        for piece in pieces:
            if len(piece) == 1:
                runs[piece[0]] = self.run(configs[piece[0]])
            elif signals.received() is not None:  # the sweep was stopped: each job says it did not start, as its own
                for i in piece:
                    runs[i] = self.run(configs[i])
                continue
            else:
                nums = ", ".join(f"#{configs[i].hydra.job.num}" for i in piece)
                log.info(f"{worker.capitalize()}Group {groups.index(piece) + 1}/{len(groups)}: {len(piece)} members "
                         f"({nums}) trained as one model")
                self.train_group(stacked, [configs[i] for i in piece], runs, piece)
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)

    def train_group(self, stacked, configs: list[DictConfig], runs: list, where: list[int]) -> None:
        """Trains one group, then finishes each member as its own job (on a signal: each saved, each says how to
        resume)."""
        from attnlab import console, sweep

        run_dirs = [self.output_dir(c) for c in configs]
        for config, run_dir in zip(configs, run_dirs):
            self.save_hydra_dir(config, run_dir)
        tasks = []
        for config in configs:
            HydraConfig.instance().set_config(config)  # ${hydra:...} in a job's config resolves as in its job
            tasks.append(self.task_config(config))
        # The group's torch threads: hydra.launcher.threads, else its jobs' device.threads (python scripts/bench.py
        # --sections stacked measures a group at 1 thread and at one per core).
        group = tasks[0]
        if self.threads is not None:
            group = OmegaConf.create(OmegaConf.to_container(group))
            group.device.threads = self.threads
        HydraConfig.instance().set_config(configs[0])  # the group's console speaks as its first job does
        configure_log(console_logging(configs[0].hydra.job_logging), self.config.hydra.verbose)
        console.one_handler_for_lightning()
        start = time.perf_counter()
        try:
            with sweep.job_process(group):
                outcomes = [m.outcome for m in stacked.train_group(tasks, run_dirs)]
        except Exception as error:  # the group's own failure (a full disk, say) is each member's, in its job.json
            outcomes = [error] * len(configs)
        wall = time.perf_counter() - start
        for i, config, run_dir, outcome in zip(where, configs, run_dirs, outcomes):
            runs[i] = self.finish(config, run_dir, outcome, wall)

    def finish(self, config: DictConfig, run_dir: Path, outcome, wall_s: float) -> JobReturn:
        """The member's job, through run_job and its task function, which gets `outcome` from train.run: its final
        metrics, or the exception that ended it (raised there, where a solo run would raise it)."""
        from attnlab import sweep

        def trained() -> dict:
            if isinstance(outcome, BaseException):
                raise outcome
            return dict(outcome)

        with sweep.trained_elsewhere(run_dir, trained, wall_s):
            ret = self.run(config)
        record = run_dir / sweep.JOB_FILE
        if record.is_file():  # its wall time: the group's training, not the moment it took to finish it
            data = json.loads(record.read_text())
            data["wall_s"] = round(wall_s, 3)
            record.write_text(json.dumps(data, indent=2) + "\n")
        return ret
