"""Callbacks that stop a run without losing it: on a signal (Ctrl+C, kill, a cluster's pre-emption) and on a
diverged loss. Both leave checkpoints/last.ckpt holding good weights, and train.run turns the stop into an
exception that names what happened and what to do next."""

import math
import signal
import sys
import threading

import lightning.pytorch as L
import torch

from attnlab import signals


class Interrupted(Exception):
    """Training stopped on a signal at `step`. `saved_step`: the step of checkpoints/last.ckpt, which is `step`
    unless a second Ctrl+C stopped at once (then the last validation's, or None if there was none yet)."""

    def __init__(self, signum: int, step: int, saved_step: int | None):
        self.signum, self.step, self.saved_step = signum, step, saved_step
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")


class Diverged(RuntimeError):
    """The loss or the weights stopped being finite."""


class StopOnSignal(L.Callback):
    """On SIGINT or SIGTERM during training: finish the current step, let Lightning validate and save
    checkpoints/last.ckpt (a stop requested through `trainer.should_stop` does both), then stop. The checkpoint
    is at a step boundary, so a resumed run goes on exactly as if never stopped. A second Ctrl+C stops at once
    without saving (Lightning's own KeyboardInterrupt handling). A job of a sweep whose process was signalled
    while the job was starting (attnlab.signals) stops before its first step.

    Lightning's SIGTERM handler alone would stop by raising an exception after the step, with no checkpoint."""

    def __init__(self):
        self.signum: int | None = None  # the signal received, once one is
        self.stopped_at: int | None = None  # the step this callback stopped training at
        self.previous: dict[int, object] = {}

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Installed here, after Lightning installed its own in fit(), and only in the main thread (where Python
        # delivers signals; a test may call fit from another).
        if threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.signal(signum, self.received) for signum in signals.SIGNALS}
        if self.signum is None and signals.received() is not None:
            self.signum, self.stopped_at = signals.received(), trainer.global_step
            trainer.should_stop = True

    def received(self, signum: int, frame) -> None:
        if signals.note(signum):
            raise KeyboardInterrupt  # the second Ctrl+C
        if self.signum is not None:
            return  # asked already
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name} received: stopping after this step and saving a checkpoint"
            " (Ctrl+C again stops at once, without saving)",
            file=sys.stderr,
            flush=True,
        )

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if self.signum is not None and self.stopped_at is None and trainer.global_step < trainer.max_steps:
            self.stopped_at = trainer.global_step
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.restore()

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        self.restore()

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}


class StopOnDivergence(L.Callback):
    """Raises Diverged when the training loss is NaN or inf, and before any checkpoint could hold non-finite
    weights.

    The loss is read on the host only every `every_n_steps` (the logging cadence, where Lightning reads it
    anyway) and on validation steps, so other steps get no extra device sync. The weights are checked at the end
    of each validation, before ModelCheckpoint (which Lightning runs after other callbacks) saves them. Raising
    from a hook ends fit() without saving, so checkpoints/last.ckpt keeps the last good weights."""

    def __init__(self, every_n_steps: int, val_every_n_steps: int, hint: str):
        self.every_n_steps, self.val_every_n_steps, self.hint = every_n_steps, val_every_n_steps, hint
        self.last_finite: tuple[int, float] | None = None  # (step, loss)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every_n_steps and step % self.val_every_n_steps:
            return
        self.check_loss(step, float(outputs["loss"]))

    def check_loss(self, step: int, loss: float) -> None:
        """Diverged if the training loss at `step` is not finite (also called per member of a stacked group)."""
        if math.isfinite(loss):
            self.last_finite = (step, loss)
        else:
            self.fail(f"train/loss is {loss} at step {step}")

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.check_weights(trainer.global_step, module.named_parameters())

    def check_weights(self, step: int, named_parameters) -> None:
        """Diverged if any of the (name, parameter) pairs holds a value that is not finite."""
        bad = [name for name, p in named_parameters if not torch.isfinite(p).all()]
        if bad:
            self.fail(f"weights are not finite at step {step} ({', '.join(bad)})")

    def fail(self, what: str) -> None:
        last = "no finite loss was seen"
        if self.last_finite is not None:
            step, loss = self.last_finite
            last = f"last finite train/loss: {loss:.4g} at step {step}"
        raise Diverged(f"training diverged: {what} ({last}). {self.hint}")
