"""Resuming a run: checking a checkpoint before anything is built, and turning `resume=RUN_DIR` on the command
line into the Hydra arguments that continue that run in its own directory.

Deliberately light (no Lightning import) so that bad input fails in a second or two."""

import json
import sys
from pathlib import Path

from attnlab.config import ConfigError

CHECKPOINT = Path("checkpoints") / "last.ckpt"  # in a run directory
CONFIG = Path(".hydra") / "config.yaml"  # the run's composed config, written by Hydra
RESUMED_CONFIG = Path(".hydra") / "resume"  # where a resumed run's Hydra writes its files; the original stay
SWEEP_CONFIG = "multirun.yaml"  # in a sweep directory: the sweep's config and command line, written by Hydra
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def load_checkpoint(path, field: str = "ckpt_path") -> dict:
    """The checkpoint at `path`, loaded as plain tensors and values only (torch.load(weights_only=True): nothing
    is unpickled that could run code), or a ConfigError naming the path and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{field}: no checkpoint file at {path} (allowed: a .ckpt written by a run, such as <run dir>/{CHECKPOINT})")
    import torch  # here, not at the top: a wrong path is reported without torch's import (seconds)

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, not a torch file, or holding objects other than tensors and plain values
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{field}: {path} is not a readable checkpoint ({reason[:200]})") from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "global_step", "loops"} <= checkpoint.keys():
        raise ConfigError(f"{field}: {path} is not a training checkpoint written by a run (no state_dict/global_step/loops)")
    return checkpoint


def check_matches(checkpoint: dict, module, path) -> None:
    """ConfigError unless the checkpoint's weights fit `module` (same model.* and task sizes as when saved)."""
    ours = module.state_dict()
    theirs = checkpoint["state_dict"]
    if ours.keys() != theirs.keys():
        raise ConfigError(f"ckpt_path: {path} holds a different model (layers or parts differ); resume with the config it was trained with")
    for name, tensor in ours.items():
        if tensor.shape != theirs[name].shape:
            raise ConfigError(
                f"ckpt_path: {path} holds {name} of shape {list(theirs[name].shape)}, this config makes "
                f"{list(tensor.shape)}; resume with the model.* and data.* sizes it was trained with"
            )


def init_checkpoint(value) -> Path:
    """The checkpoint init_from names: a run directory's last one, or a .ckpt file given as it is."""
    path = Path(str(value)).expanduser()
    if path.is_dir():
        if not (path / CHECKPOINT).is_file():
            raise ConfigError(f"init_from: {path} has no {CHECKPOINT} (allowed: a run directory that has saved one, or a .ckpt file)")
        return path / CHECKPOINT
    return path


def load_weights(module, value) -> None:
    """The weights of the checkpoint init_from names, into `module` (nothing else of it: no optimiser, loop or data
    state). A ConfigError names the first tensor that this config's model lacks, does not have, or makes in
    another shape: the task may differ, so long as the vocabulary, positions and model sizes fit."""
    path = init_checkpoint(value)
    theirs = load_checkpoint(path, "init_from")["state_dict"]
    ours = module.state_dict()
    for name in sorted(ours.keys() | theirs.keys()):
        if name not in ours:
            raise ConfigError(f"init_from: {path} holds {name}, which this config's model does not have (model.layers, "
                              "model.mlp, model.norm and model.positions must be as when it was trained)")
        if name not in theirs:
            raise ConfigError(f"init_from: {path} has no {name}, which this config's model has (model.layers, "
                              "model.mlp, model.norm and model.positions must be as when it was trained)")
        if ours[name].shape != theirs[name].shape:
            raise ConfigError(
                f"init_from: {path} holds {name} of shape {list(theirs[name].shape)}, this config makes "
                f"{list(ours[name].shape)} (the vocabulary, data.seq_len and model sizes must fit)"
            )
    module.load_state_dict(theirs)


def resume_arguments(argv: list[str], conf_dir: Path) -> list[str] | None:
    """Hydra's command-line arguments for `resume=RUN_DIR ...`: that run's own composed config (not today's
    defaults), its last checkpoint and its directory, so the run goes on in place and in the same TensorBoard run.
    Other key=value overrides on the line apply on top (say trainer.max_steps=6000 to train longer). Hydra's files
    for the resumed part go to .hydra/resume/, so the original .hydra/ stays as it was. conf_dir: the project's
    conf/, for the console's logging (hydra/job_logging=attnlab), which the run's composed config, having no
    defaults list, does not name. argv without resume= is returned as it is."""
    given = [a for a in argv if a.startswith("resume=")]
    if not given:
        return argv
    if len(given) > 1:
        raise ConfigError("resume: give one run directory (or, with -m, one sweep directory)")
    run_dir = Path(given[0].split("=", 1)[1]).expanduser().resolve()
    multirun = "-m" in argv or "--multirun" in argv
    if multirun or (run_dir / SWEEP_CONFIG).is_file():
        if not multirun:
            raise ConfigError(f"resume: {run_dir} is a sweep directory: finish it with python {sys.argv[0]} -m resume={run_dir}")
        return sweep_arguments(argv, run_dir)
    config_dir = next((d for d in (run_dir / RESUMED_CONFIG, run_dir / CONFIG.parent) if (d / CONFIG.name).is_file()), None)
    if config_dir is None:
        raise ConfigError(f"resume: {run_dir} is not a run directory (allowed: a directory under outputs/ that has {CONFIG})")
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.is_file():
        raise ConfigError(
            f"resume: {run_dir} has no {CHECKPOINT} (a run saves it at its first validation); start that config afresh"
        )
    if "'" in str(run_dir):
        raise ConfigError(f"resume: {run_dir}: a run directory with ' in its path cannot be passed to Hydra")
    rest = [a for a in argv if a not in given]
    return [  # Hydra's flags first: argparse takes no flag after the first of the positional overrides
        f"--config-path={config_dir}",
        "--config-name=config",
        f"--config-dir={conf_dir}",
        "hydra/job_logging=attnlab",  # as a fresh run's console: each notice once and short, no advertisement
        *rest,
        f"++ckpt_path='{checkpoint}'",
        f"hydra.run.dir='{run_dir}'",
        f"hydra.output_subdir={RESUMED_CONFIG}",
    ]


METRICS = "metrics.json"  # written by a run that ended (attnlab.train.METRICS_FILE)


def finished(argv: list[str]) -> bool:
    """Whether `resume=RUN_DIR ...` names a run that has ended (it wrote metrics.json: it reached
    trainer.max_steps, or trainer.stop_at) and the line asks for no more steps. Then says so, with how to train
    longer, so that nothing is validated again or written."""
    given = [a for a in argv if a.startswith("resume=")]
    if len(given) != 1:
        return False  # resume_arguments names what is wrong
    run_dir = Path(given[0].split("=", 1)[1]).expanduser().resolve()
    config_file = next((d / CONFIG.name for d in (run_dir / RESUMED_CONFIG, run_dir / CONFIG.parent) if (d / CONFIG.name).is_file()), None)
    if config_file is None or not (run_dir / METRICS).is_file() or not (run_dir / CHECKPOINT).is_file():
        return False
    from omegaconf import OmegaConf

    trainer = OmegaConf.load(config_file).trainer
    for argument in argv:  # the line's own trainer.max_steps / trainer.stop_at, if given
        key, _, value = argument.lstrip("+").partition("=")
        if key in ("trainer.max_steps", "trainer.stop_at"):
            trainer[key.split(".")[1]] = None if value in ("null", "None") else float(value)
    step = load_checkpoint(run_dir / CHECKPOINT, "resume")["global_step"]
    seq_acc = json.loads((run_dir / METRICS).read_text()).get("val/seq_acc", 0.0)
    stopped = trainer.stop_at is not None and seq_acc > trainer.stop_at
    if step < trainer.max_steps and not stopped:
        return False
    why, more = [], []  # what ended it, and what lifts each: the line to train longer lifts both where both hold
    if step >= trainer.max_steps:
        why.append(f"it reached trainer.max_steps={trainer.max_steps:g}")
        more.append(f"trainer.max_steps={2 * step}")
    if stopped:
        why.append(f"val/seq_acc {seq_acc:.3f} passed trainer.stop_at={trainer.stop_at:g}")
        more.append("trainer.stop_at=null")
    print(f"{run_dir} has finished at step {step} ({' and '.join(why)}); nothing to resume. To train longer: "
          f"python {sys.argv[0]} resume={run_dir} {' '.join(more)}")
    return True


def how_to_resume(run_dir: Path) -> str:
    return f"python {sys.argv[0]} resume={run_dir}"


def check_run_dir(run_dir, field: str = "RUN_DIR") -> Path:
    """run_dir as a Path where it is a run directory (its composed config and last checkpoint are there), else a
    ConfigError naming what is missing. Looks at files only, so a wrong path is refused before torch's import."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{field}: {run_dir} is not a directory")
    if not (run_dir / CONFIG).is_file():
        hint = ""
        if any(run_dir.glob(f"*/{CONFIG}")) or any(run_dir.glob(f"*/*/{CONFIG}")):
            hint = " (it holds runs: pass one of them, e.g. a sweep's outputs/multirun/<date>/<time>/<overrides>)"
        raise ConfigError(f"{field}: {run_dir} is not a run directory: it has no {CONFIG}{hint}")
    if not (run_dir / CHECKPOINT).is_file():
        raise ConfigError(f"{field}: {run_dir} has no {CHECKPOINT} (did its training finish?)")
    return run_dir
# ---- finishing a stopped sweep: python scripts/train.py -m resume=SWEEP_DIR --------------------------------------


def sweep_jobs(sweep_dir: Path, task_overrides: list[str]) -> list[dict]:
    """Every job of the sweep that `task_overrides` (its command line's key=value arguments) makes, in Hydra's
    order (its number: the place in that order), each with its directory where it has one and what is left to
    do for it:
      done     it ended (metrics.json; job.json ok, or none where its process was killed after writing them)
      failed   it ended failing (job.json): left as it is, since running it again would fail again
      resume   it was stopped after a checkpoint: goes on from there, in place
      run      it never started, was stopped before its first checkpoint, or has no directory (the sweep's process
               was killed before it): trained from the start
    The jobs are matched to directories by their overrides, which each job's job.json (else .hydra/) records."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from attnlab.sweep import JOB_FILE, METRICS_FILE

    (everything,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(task_overrides), None)
    found: dict[tuple, tuple[Path, dict]] = {}
    for hydra_dir in sweep_dir.rglob(CONFIG.parent.name):
        run_dir = hydra_dir.parent
        record = json.loads((run_dir / JOB_FILE).read_text()) if (run_dir / JOB_FILE).is_file() else {}
        if "overrides" not in record and (hydra_dir / "overrides.yaml").is_file():
            record["overrides"] = list(OmegaConf.load(hydra_dir / "overrides.yaml"))
        found[tuple(record.get("overrides", ()))] = run_dir, record
    for record_file in sweep_dir.rglob(JOB_FILE):  # refused at config time: a job.json without .hydra/
        record = json.loads(record_file.read_text())
        found.setdefault(tuple(record.get("overrides", ())), (record_file.parent, record))
    jobs = []
    for num, overrides in enumerate(everything):
        run_dir, record = found.get(tuple(overrides), (None, {}))
        status = record.get("status")
        if run_dir is None:
            todo = "run"
        elif status == "failed":
            todo = "failed"
        elif (run_dir / METRICS_FILE).is_file() and status in ("ok", None):
            todo = "done"
        else:
            todo = "resume" if (run_dir / CHECKPOINT).is_file() else "run"
        jobs.append({"num": num, "overrides": overrides, "run_dir": run_dir, "todo": todo})
    return jobs


def sweep_arguments(argv: list[str], sweep_dir: Path) -> list[str] | None:
    """Hydra's arguments for `-m resume=SWEEP_DIR`: the sweep's own command line (from its multirun.yaml: the same
    launcher and its settings, the same jobs and directories) with hydra/sweeper=finish, which launches only the
    jobs left to do (sweep_jobs) and leaves the others as they are. hydra.* settings on the line apply on top
    (hydra.launcher.n_jobs=4, say); other keys would change the jobs, and are refused. None where nothing is
    left to do (said in one line)."""
    from omegaconf import OmegaConf

    if not (sweep_dir / SWEEP_CONFIG).is_file():
        raise ConfigError(f"resume: {sweep_dir} is not a sweep directory (allowed with -m: a directory under "
                          f"outputs/multirun/ that has {SWEEP_CONFIG})")
    if "'" in str(sweep_dir):
        raise ConfigError(f"resume: {sweep_dir}: a sweep directory with ' in its path cannot be passed to Hydra")
    multirun = OmegaConf.load(sweep_dir / SWEEP_CONFIG)
    sweeper = multirun.hydra.sweeper.get("_target_")
    if sweeper != BASIC_SWEEPER:
        raise ConfigError(f"resume: {sweep_dir} was made by the sweeper {sweeper}; only a sweep of Hydra's basic sweeper "
                          "(-m key=a,b ...) can be finished (an Optuna study: run it again with the same storage and "
                          "study_name to add trials)")
    extra = [a for a in argv if not a.startswith("resume=") and a not in ("-m", "--multirun")]
    if changed := [a for a in extra if not a.lstrip("+~").startswith("hydra")]:
        raise ConfigError(f"resume: {changed[0]}: a sweep is finished with the config it started with (allowed on the "
                          "line: hydra.* settings, such as hydra.launcher.n_jobs=4)")
    # the jobs' overrides as the basic sweeper made them: its hydra.sweeper.params first, then the command line's
    params = [f"{key}={value}" for key, value in (multirun.hydra.sweeper.get("params") or {}).items()]
    task = [*params, *multirun.hydra.overrides.task]
    jobs = sweep_jobs(sweep_dir, task)
    todo = [job for job in jobs if job["todo"] in ("resume", "run")]
    if not todo:
        counts = {t: sum(job["todo"] == t for job in jobs) for t in ("done", "failed")}
        failed = f", {counts['failed']} failed (left as they are)" if counts["failed"] else ""
        print(f"{sweep_dir}: nothing to finish: its {len(jobs)} jobs have ended ({counts['done']} ok{failed})")
        return None
    # the sweep's own hydra settings (its launcher, say), less those this command sets
    hydra = [o for o in multirun.hydra.overrides.hydra if not o.startswith(("hydra.sweep.dir=", "hydra.mode=", "hydra/sweeper="))]
    main = next((s.path for s in multirun.hydra.runtime.config_sources if s.provider == "main" and s.schema == "file"), None)
    where = [f"--config-path={main}"] if main else []
    return [*where, f"--config-name={multirun.hydra.job.config_name}", "-m", *hydra, *task, *extra,
            f"hydra.sweep.dir='{sweep_dir}'", "hydra/sweeper=finish"]
