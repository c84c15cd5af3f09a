"""The run's progress line: Lightning's tqdm bar in the run's own terms.

    step 1400/3000 █████████▎           loss 0.0123 · val/seq_acc 0.984 [00:14, 98.10 steps/s]
    step 1460/3000 █████████▋           loss 0.0021 · val/seq_acc 1.000 · stop_at 0.999 reached [00:15, 97.40 steps/s]

On a terminal the line is redrawn in place. Anywhere else (a log file, a pipe) it is written as a line of its own
after each validation and at the end, so that a log holds lines to read rather than one line of every redraw
joined by carriage returns.

Lightning's own bar counts batches of an "epoch" (a run is one epoch of trainer.max_steps batches: "Epoch 0: 7%
200/3000" for a run stopped at step 200) and draws a bar of its own for every validation, which interleaved with it.
"""

import io
import signal
import sys

import lightning.pytorch as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from attnlab import signals, tags

LOSS, SEQ_ACC = tags.metric("train", "loss"), tags.metric("val", "seq_acc")


class RunProgress(TQDMProgressBar):
    """One line: step N/trainer.max_steps, the train loss, the last validation's seq_acc, and when training ends,
    why (max_steps reached, stop_at reached, the signal that stopped it). Redrawn every `refresh_rate` steps (a
    redraw reads the metrics: it costs time) and after each validation, which draws nothing of its own (it takes
    milliseconds here). train/loss is in trainer.callback_metrics at the logged steps (logging.every_n_steps)."""

    BAR_FORMAT = "step {n_fmt}/{total_fmt} {bar:20} {desc} [{elapsed}, {rate_fmt}]"  # desc: self.line

    def __init__(self, refresh_rate: int = 20):
        super().__init__(refresh_rate=refresh_rate)
        self.drawn = -1  # the step last drawn
        self.terminal = sys.stdout.isatty()  # else a log file or a pipe: a line per validation, none redrawn

    def init_train_tqdm(self) -> Tqdm:
        trainer = self.trainer  # on resume the count starts at the checkpoint's step, and so does the rate
        return Tqdm(
            total=trainer.max_steps, initial=trainer.global_step, unit=" steps", position=2 * self.process_position,
            disable=self.is_disabled, leave=True, dynamic_ncols=True, smoothing=0,
            # Elsewhere draw() prints the line itself, with the terminal's bar characters (the line holds '·' anyway):
            # tqdm would take a buffer for ASCII-only and draw digits for partly filled cells.
            **({"file": sys.stdout} if self.terminal else {"file": io.StringIO(), "ascii": False}),
            bar_format=self.BAR_FORMAT,
        )

    def line(self, trainer: L.Trainer, ended: str | None = None) -> str:
        metrics = trainer.callback_metrics
        parts = [f"loss {float(metrics[LOSS]):.4g}"] if LOSS in metrics else []
        parts += [f"{SEQ_ACC} {float(metrics[SEQ_ACC]):.3f}"] if SEQ_ACC in metrics else []
        return " · ".join(parts + ([ended] if ended else []))

    def draw(self, trainer: L.Trainer, ended: str | None = None, refresh: bool = True) -> None:
        bar = self.train_progress_bar
        bar.n = self.drawn = trainer.global_step
        bar.set_description_str(self.line(trainer, ended), refresh=refresh and self.terminal)
        if not self.terminal and not bar.disable:  # disabled: a rank other than 0 of a multi-process run
            print(bar, flush=True)  # tqdm's own text of the line, as a terminal would show it

    @staticmethod
    def why_it_ended(trainer: L.Trainer) -> str:
        if trainer.global_step >= trainer.max_steps:
            return "max_steps reached"
        stopper = trainer.early_stopping_callback
        if stopper is not None and stopper.stopping_reason == EarlyStoppingReason.STOPPING_THRESHOLD:
            return f"stop_at {stopper.stopping_threshold:g} reached"
        if (signum := signals.received()) is not None:
            return f"stopped by {signal.Signals(signum).name}"
        return "stopped"

    # One bar for the whole run, not one per "epoch".
    def on_train_epoch_start(self, trainer: L.Trainer, *_) -> None:
        pass

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        pass

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        # Counted in optimiser steps: with gradient accumulation several batches end on the same step.
        step = trainer.global_step
        if self.terminal and step != self.drawn and self._should_update(step, trainer.max_steps):
            self.draw(trainer)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.draw(trainer, self.why_it_ended(trainer), refresh=False)
        self.train_progress_bar.close()  # draws it a last time

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if self._train_progress_bar is not None:
            self._train_progress_bar.close()  # the error's message then starts a line of its own

    # Validation: no bar; the line takes up its new val/seq_acc.
    def on_sanity_check_start(self, *_) -> None:
        pass

    def on_sanity_check_end(self, *_) -> None:
        pass

    def on_validation_start(self, *_) -> None:
        pass

    def on_validation_batch_start(self, *_, **__) -> None:
        pass

    def on_validation_batch_end(self, *_, **__) -> None:
        pass

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._train_progress_bar is not None and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.draw(trainer)
