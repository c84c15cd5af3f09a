"""The stacked launcher: jobs of a sweep that differ only in what a member may differ in (seed, optim.*, stop_at:
attnlab.stacked.MEMBER_KEYS) are trained together as one stacked model, one group after another.

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

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from hydra.core.hydra_config import HydraConfig
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


class StackedLauncher(Launcher):
    def __init__(self, max_members: int = 64, threads: Optional[int] = None) -> None:
        self.max_members, self.threads = max_members, threads
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

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

        from attnlab import signals, stacked  # torch and Lightning: seconds, so only now

        log.info(f"Stacked launcher: {len(configs)} jobs, at most {self.max_members} members per model")
        groups: dict[str, list[int]] = {}
        alone = []  # refused at config time (they stop with their line), or trained by themselves
        for i, config in enumerate(configs):
            task = self.task_config(config)  # with HydraConfig set to this job's: group_key resolves ${hydra:...}
            reason = stacked.refusal(task)
            if reason is None:
                groups.setdefault(stacked.group_key(task), []).append(i)
            else:
                alone.append(i)
                log.info(f"\t#{config.hydra.job.num} alone ({reason}): {' '.join(filter_overrides(config.hydra.overrides.task))}")
        batches = [idx[s : s + self.max_members] for idx in groups.values() for s in range(0, len(idx), self.max_members)]
        for i in (i for batch in batches if len(batch) == 1 for i in batch):  # a group of one: the solo path itself
            alone.append(i)
            log.info(f"\t#{configs[i].hydra.job.num} alone (a group of one): "
                     f"{' '.join(filter_overrides(configs[i].hydra.overrides.task))}")
        batches = [batch for batch in batches if len(batch) > 1]

        runs: list[Optional[JobReturn]] = [None] * len(configs)
        for i in alone:
            runs[i] = self.run(configs[i])
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        for n, batch in enumerate(batches):
            if signals.received() is not None:  # the sweep was stopped: each job says it did not start, as its own
                for i in batch:
                    runs[i] = self.run(configs[i])
                continue
            nums = ", ".join(f"#{configs[i].hydra.job.num}" for i in batch)
            log.info(f"Group {n + 1}/{len(batches)}: {len(batch)} members ({nums}) trained as one model")
            self.train_group(stacked, [configs[i] for i in batch], runs, batch)
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs

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
