"""The sweeper behind `python scripts/train.py -m resume=SWEEP_DIR` (attnlab.resume.sweep_arguments), which gives it
the stopped sweep's own command line and directory. Of the jobs that command line makes, in Hydra's basic sweeper's
order, it launches those left to do (attnlab.resume.sweep_jobs) under the sweep's own launcher, numbered as they
were first:

- a job stopped after a checkpoint goes on from it in its directory (ckpt_path=, as resume=RUN_DIR does; its
  Hydra files go to .hydra/resume/, so .hydra/ keeps the job's own, and its directory name leaves ckpt_path out);
- a job that never started, or has no directory, is trained from the start;
- a finished or failed job is left as it is.

The sweep then ends as any does, with the summary of all its jobs (attnlab.summary). Its multirun.yaml stays the
stopped sweep's: the sweep's command line, for the next finish and for the HParams' swept keys.

Imported by Hydra whenever it looks for plugins: nothing heavy."""

import logging
from pathlib import Path
from typing import Any, List

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

log = logging.getLogger(__name__)


class FinishSweeper(BasicSweeper):
    def sweep(self, arguments: List[str]) -> Any:
        from attnlab import resume

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        jobs = resume.sweep_jobs(sweep_dir, list(arguments))
        # what names a job's directory leaves out: a resumed job's directory is the one its overrides named
        excluded = [*self.config.hydra.job.config.override_dirname.exclude_keys, "ckpt_path"]
        todo = []
        for job in jobs:
            overrides = list(job["overrides"])
            if job["todo"] == "resume":
                overrides += [f"ckpt_path='{job['run_dir'] / resume.CHECKPOINT}'",
                              f"hydra.output_subdir={resume.RESUMED_CONFIG}",
                              f"hydra.job.config.override_dirname.exclude_keys=[{','.join(excluded)}]"]
            if job["todo"] in ("resume", "run"):
                todo.append((job["num"], overrides))
        left = {t: sum(job["todo"] == t for job in jobs) for t in ("resume", "run", "done", "failed")}
        log.info(f"Finishing {sweep_dir}: {left['resume']} job(s) go on from their checkpoint, {left['run']} start, "
                 f"{left['done']} finished and {left['failed']} failed are left as they are")
        returns = []
        # Launched in runs of consecutive numbers, since a launcher numbers the jobs of a launch one after another
        # from the first: each job keeps the number (hydra.job.num, its job.json's) it had in the stopped sweep.
        start = 0
        while start < len(todo):
            end = start + 1
            while end < len(todo) and todo[end][0] == todo[end - 1][0] + 1:
                end += 1
            batch = [overrides for _, overrides in todo[start:end]]
            self.validate_batch_is_legal(batch)
            returns.append(self.launcher.launch(batch, initial_job_idx=todo[start][0]))
            start = end
        return returns
