"""Train one run (or a sweep with -m) from the Hydra config in conf/.

    python scripts/train.py model.dim=64 data=sort device=cpu
    python scripts/train.py -m model.dim=16,32,64 model.heads=1,2
    python scripts/train.py resume=outputs/2026-01-01/10-00-00      # go on with a stopped run, in place
"""

import contextlib
import gc
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from attnlab import config, console, resume, signals, sweep
from attnlab.config import ConfigError


def stop_before_training(error: ConfigError, run_dir: Path):
    print(f"error: {error}", file=sys.stderr)
    # Nothing was trained: remove the directory Hydra made, so no run looks real that is not (never one that
    # holds a run's event files or checkpoints, as when resuming).
    if not any(p.name.startswith("events.out") or p.suffix == ".ckpt" for p in run_dir.rglob("*")):
        shutil.rmtree(run_dir, ignore_errors=True)
    sys.exit(2)


CONF = Path(__file__).resolve().parent.parent / "conf"


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    if sweep.in_sweep():  # -m: a failing job is recorded in its job.json, and the sweep goes on
        return sweep.isolated(train, cfg, Path(HydraConfig.get().runtime.output_dir))
    return train(cfg)


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic garbage collector paused while torch and Lightning are imported, and what they made moved
    out of its reach after (gc.freeze). Those imports make some 400,000 long-lived objects, none of them garbage,
    which the collector would walk again and again as they are made, and once more at exit. The start-up section of
    python scripts/bench.py measures the start; for the exit, compare `time python -c "import lightning.pytorch"`
    with `time python -c "import gc, lightning.pytorch; gc.freeze()"`. Garbage made from here on is collected as
    usual. Once per process: a later job
    of a sweep in this process (basic launcher) finds the imports done."""
    if gc.get_freeze_count():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def train(cfg: DictConfig) -> float:
    """One run; returns cfg.optimized_metric (the value a sweeper such as Optuna optimises)."""
    start = time.perf_counter()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    # Bad input fails at once: what can be checked is, before the imports that take seconds (torch, Lightning).
    with collector_paused():
        try:
            config.check(cfg)
            from attnlab.tasks import make_task

            task = make_task(cfg.data)
            config.val_lengths(cfg.data, task)
            config.check_memory(cfg, task)  # before the first allocation
            config.check_device(cfg.device)
            start_step = resume.load_checkpoint(cfg.ckpt_path)["global_step"] if cfg.get("ckpt_path") else 0
            if cfg.get("init_from") and not cfg.get("ckpt_path"):  # (a resumed run goes on from its own checkpoint)
                resume.load_checkpoint(resume.init_checkpoint(cfg.init_from), "init_from")
        except ConfigError as error:
            stop_before_training(error, run_dir)
        from attnlab.guards import Diverged, Interrupted
        from attnlab.train import PROFILE_FILE, run

        console.one_handler_for_lightning()

    # TensorBoard's writer thread hands a failed write (disk full) on to the main thread, which reports it below
    # once; the thread's own traceback would only repeat it.
    threading.excepthook = lambda a: None if issubclass(a.exc_type, OSError) else threading.__excepthook__(a)
    try:
        with sweep.job_process(cfg):  # parallel jobs share the cores instead of each taking them all
            metrics = run(cfg, run_dir)
    except ConfigError as error:  # found while building: the device, a checkpoint that does not fit the model
        stop_before_training(error, run_dir)
    except Interrupted as stop:
        checkpoint = run_dir / resume.CHECKPOINT
        if stop.saved_step is None:
            print(f"Training {stop}, before its first checkpoint: start it afresh", file=sys.stderr)
        else:
            saved = "saved" if stop.saved_step == stop.step else f"of step {stop.saved_step} kept"
            print(f"Training {stop}; checkpoint {saved}: {checkpoint}\nResume with:  {resume.how_to_resume(run_dir)}", file=sys.stderr)
        sys.exit(128 + stop.signum)  # the shell's convention for "ended by signal N"; a sweep stops too
    except Diverged as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(3)
    except OSError as error:  # disk full, run directory removed or made read-only while training
        print(f"error: writing the run in {run_dir} failed: {error}. What was written before is kept.", file=sys.stderr)
        sys.exit(4)
    if cfg.trainer.get("fast_dev_run"):
        print(f"\nDry run (trainer.fast_dev_run={cfg.trainer.fast_dev_run}): every callback ran once; no metrics.json"
              " was written, nothing here is a result.")
    if (profile := run_dir / PROFILE_FILE).is_file():
        print(f"\nProfile ({profile}), the top of it:\n" + "\n".join(profile.read_text().splitlines()[:14]))
    if not cfg.trainer.get("fast_dev_run"):  # a dry run learned nothing to report
        group = sweep.trained_wall(run_dir)  # a stacked member: its group's training time, not this moment's
        wall = time.perf_counter() - start if group is None else group
        print("\n" + console.learned(metrics, wall, start_step, cfg.trainer.max_steps))
    # images=1000: TensorBoard keeps only 10 frames per image tag by default (and images=0 shows none in 2.21).
    print(f"\nRun saved in {run_dir}\nView it with:  tensorboard --logdir {run_dir} --samples_per_plugin images=1000")
    if not sweep.in_sweep():  # resume=RUN_DIR of a sweep's job, to the end: its job.json says ok
        sweep.resumed_alone(run_dir, time.perf_counter() - start)
    metric = cfg.get("optimized_metric", "val/seq_acc")  # runs made before the key existed can be resumed
    if metric not in metrics:
        print(f"error: optimized_metric must be one of {', '.join(metrics)}, got {metric!r} "
              f"(the run itself is saved in {run_dir})", file=sys.stderr)
        sys.exit(2)
    return metrics[metric]


if __name__ == "__main__":
    try:
        config.check_extras(sys.argv[1:])
        sys.argv[1:] = config.checked_arguments(sys.argv[1:])  # Hydra's refusals as one line each
        if resume.finished(sys.argv[1:]):
            sys.exit(0)
        # resume=RUN_DIR: that run's config and checkpoint; -m resume=SWEEP_DIR: the sweep's jobs left to do
        arguments = resume.resume_arguments(sys.argv[1:], CONF)
        if arguments is None:  # a sweep with nothing left to do: said so
            sys.exit(0)
        sys.argv[1:] = arguments
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    try:
        main()
    except KeyboardInterrupt:  # Ctrl+C before training began, or pressed again in a sweep: stopped at once
        sys.exit(128 + signal.SIGINT)
    if (signum := signals.received()) is not None:  # a sweep stopped by a signal, ended with its summary
        sys.exit(128 + signum)
