"""Which training steps a run keeps the weights of (the `checkpoint` config group), and finding them again.

    checkpoint=last    checkpoints/last.ckpt only (at every validation and at the end, to resume from)
    checkpoint=log     also checkpoints/step=N.ckpt at steps 0, 1, 2, 4, ..., 512, then every 1000 (Pythia's schedule)
    checkpoint=every   also checkpoints/step=N.ckpt at steps 0, N, 2N, ... (checkpoint.every_n_steps)

Step N is the weights after N optimiser steps (step 0: as initialised). The kept steps hold the model's weights
only (no optimiser or loop state: they are for looking at, last.ckpt is for going on). Lightning's ModelCheckpoint
saves every N steps but neither step 0 nor a list of steps, so one callback does both, through the Trainer's own
save_checkpoint.

Deliberately light (no Lightning import at the top) so that load_run's checks on a path fail fast.
"""

import functools
import re
from pathlib import Path

from attnlab import resume
from attnlab.config import ConfigError

LAST = resume.CHECKPOINT  # checkpoints/last.ckpt
SCHEDULES = ("last", "log", "every")
STEP_FILE = re.compile(r"step=(\d+)\.ckpt")


def step_file(step: int) -> Path:
    return LAST.parent / f"step={step}.ckpt"


def keeps(schedule: str, every_n_steps: int | None, step: int) -> bool:
    """Whether the schedule keeps the weights of `step`."""
    if schedule == "log":
        return (step & (step - 1) == 0 and step <= 512) or step % 1000 == 0  # 0, 1, 2, 4, ... 512, 1000, 2000, ...
    if schedule == "every":
        return step % every_n_steps == 0
    return False


def kept_steps(run_dir: Path) -> list[int]:
    """The steps of checkpoints/step=N.ckpt in a run directory, ascending."""
    folder = Path(run_dir) / LAST.parent
    found = (STEP_FILE.fullmatch(p.name) for p in folder.glob("step=*.ckpt")) if folder.is_dir() else ()
    return sorted(int(m.group(1)) for m in found if m)


def path(run_dir: Path, step: int | None, steps: list[int]) -> Path:
    """The checkpoint file of `step` (None: last.ckpt), or a ConfigError naming the steps the run kept."""
    run_dir = Path(run_dir)
    if step is None:
        if not (run_dir / LAST).is_file():
            raise ConfigError(f"RUN_DIR: {run_dir} has no {LAST} (did its training finish?)")
        return run_dir / LAST
    if isinstance(step, bool) or not isinstance(step, int) or step not in steps:
        kept = ", ".join(map(str, steps)) if steps else "none: it trained with checkpoint=last; checkpoint=log or every keeps steps"
        raise ConfigError(f"step: {run_dir} kept no checkpoint of step {step!r} (kept steps: {kept}; step=None for {LAST})")
    return run_dir / step_file(step)


def callback(cfg, run_dir: Path):
    """The callback that keeps cfg's schedule, or None for checkpoint=last (and configs from before the group)."""
    section = cfg.get("checkpoint") or {}
    schedule = section.get("schedule", "last")
    if schedule == "last":
        return None
    return step_checkpoints_class()(run_dir / LAST.parent, schedule, section.get("every_n_steps"))


@functools.cache
def step_checkpoints_class():
    """The Lightning callback class (made on first use: Lightning's import takes seconds)."""
    import lightning.pytorch as L  # here: this module is imported by load_run's fast checks

    class StepCheckpoints(L.Callback):
        """checkpoints/step=N.ckpt (weights only) at the schedule's steps: step 0 when training starts from scratch,
        then after each optimiser step the schedule keeps."""

        def __init__(self, folder: Path, schedule: str, every_n_steps: int | None):
            self.folder, self.schedule, self.every_n_steps = Path(folder), schedule, every_n_steps
            self.saved = -1  # the last step saved: with accumulation a step ends several batches

        def save(self, trainer: L.Trainer) -> None:
            step = trainer.global_step
            if step != self.saved and keeps(self.schedule, self.every_n_steps, step):
                trainer.save_checkpoint(self.folder / f"step={step}.ckpt", weights_only=True)
                self.saved = step

        def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            if trainer.global_step == 0:  # a resumed run kept its step 0 when it started
                self.save(trainer)

        def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args) -> None:
            self.save(trainer)

    return StepCheckpoints
