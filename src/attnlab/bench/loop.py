"""1. The framework (train.run, logging off) vs a hand-written PyTorch loop and bare Lightning: steps/s, the same
model, batches, optimiser and device, at the default size and a larger one."""

import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as L
import torch
from omegaconf import DictConfig

from attnlab.bench.harness import Report, Sizes, config, quiet, rounds_of, say, table
from attnlab.data import Batches
from attnlab.module import loss as masked_loss
from attnlab.train import build, run

# The larger model: 4x the width, 4 heads, 2 layers, sequences twice as long.
LARGER = ["model.dim=128", "model.heads=4", "model.layers=2", "data.seq_len=16"]


class StepTimer(L.Callback):
    """The window from the start of training step `skip` to the end of step `last`: (start, end, CPU seconds). The
    clocks are read at those two steps only: reading the process CPU clock is a system call (~0.1 ms in a VM),
    which timing every step would add to the framework's side alone."""

    def __init__(self, skip: int, last: int):
        self.skip, self.last, self.start, self.end = skip, last, None, None

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.skip:
            self.start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.last:
            self.end = (time.perf_counter(), time.process_time())

    def window(self) -> tuple[float, float, float]:
        return self.start[0], self.end[0], self.end[1] - self.start[1]


def framework_window(cfg: DictConfig, skip: int) -> tuple[float, float, float]:
    timer = StepTimer(skip, cfg.trainer.max_steps)
    with tempfile.TemporaryDirectory() as run_dir, quiet():
        run(cfg, Path(run_dir), extra_callbacks=[timer])
    return timer.window()


def hand_written_window(cfg: DictConfig, skip: int) -> tuple[float, float, float]:
    """The fastest plain loop for the same model: the same build (model, seeded batch stream), the same AdamW."""
    L.seed_everything(cfg.seed, verbose=False)  # as train.run does: the same initial weights
    task, module, data = build(cfg)
    model = module.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    for step in range(cfg.trainer.max_steps):
        if step == skip:
            start = (time.perf_counter(), time.process_time())
        inputs, targets, mask = task.sample(cfg.data.batch_size, data.generator)  # the run's batch stream
        logits, _ = model(inputs)  # [batch, pos, vocab]
        loss = masked_loss(logits, targets, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return start[0], time.perf_counter(), time.process_time() - start[1]


class BareModule(L.LightningModule):
    """Lightning's floor for this model: training_step does forward, loss, backward and the optimiser step, and
    counts the step as LightningOptimizer.step would; nothing else."""

    def __init__(self, model: torch.nn.Module, lr: float, weight_decay: float):
        super().__init__()
        self.model, self.lr, self.weight_decay = model, lr, weight_decay
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx: int) -> None:
        inputs, targets, mask = batch
        logits, _ = self.model(inputs)
        loss = masked_loss(logits, targets, mask)
        optimizer = self.optimizers(use_pl_optimizer=False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        progress.increment_ready()
        progress.increment_completed()

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def bare_lightning_window(cfg: DictConfig, skip: int) -> tuple[float, float, float]:
    L.seed_everything(cfg.seed, verbose=False)
    task, module, data = build(cfg)
    timer = StepTimer(skip, cfg.trainer.max_steps)
    batches = Batches(task, cfg.data.batch_size, data.generator, cfg.trainer.max_steps)  # the run's batch stream
    with quiet():
        trainer = L.Trainer(
            accelerator="cpu", devices=1, max_steps=cfg.trainer.max_steps, max_epochs=-1, limit_val_batches=0,
            num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[timer],
        )  # fmt: skip
        trainer.fit(BareModule(module.model, cfg.optim.lr, cfg.optim.weight_decay), train_dataloaders=batches)
    return timer.window()


def measure(sizes: Sizes, report: Report) -> None:
    rows = []
    for name, extra, steps in (("default", [], sizes.loop_steps), ("larger", LARGER, sizes.loop_steps_larger)):
        cfg = config(
            ["logging=off", "device=cpu", "trainer.stop_at=null", f"trainer.max_steps={steps}",
             f"trainer.val_every_n_steps={steps}", "data.val_size=64", *extra]
        )  # fmt: skip
        rounds = sizes.rounds if name == "default" else min(sizes.rounds, 3)  # the larger one takes long
        say(f"loop/{name}: {rounds} rounds of {steps} steps, framework, bare Lightning and hand-written interleaved")
        skip = sizes.warmup_steps
        if name == "default":  # once untimed, in this process: what the sides' processes inherit is imported
            framework_window(cfg, skip), bare_lightning_window(cfg, skip), hand_written_window(cfg, skip)
        fw, bare, hand = rounds_of(
            lambda: framework_window(cfg, skip), lambda: bare_lightning_window(cfg, skip),
            lambda: hand_written_window(cfg, skip), rounds=rounds,
        )
        timed = steps - skip
        rate = lambda r: timed / r[0]  # steps per second of its own turns  # noqa: E731
        ratio = lambda side, clock: statistics.median(h[clock] / r[clock] for r, h in zip(side, hand))  # noqa: E731
        wall, cpu, bare_ratio = ratio(fw, 0), ratio(fw, 1), ratio(bare, 0)
        m = cfg.model
        rows.append(
            (f"{name}: dim {m.dim}, {m.heads} head(s), {m.layers} layer(s), seq {cfg.data.seq_len}, batch {cfg.data.batch_size}",
             f"{statistics.median(map(rate, hand)):.0f}", f"{statistics.median(map(rate, bare)):.0f}",
             f"{statistics.median(map(rate, fw)):.0f}", f"{bare_ratio:.2f}x", f"{wall:.2f}x", f"{cpu:.2f}x",
             ", ".join(f"{h[0] / r[0]:.2f}" for r, h in zip(fw, hand)))
        )  # fmt: skip
        # The target is against Lightning's own floor: bare Lightning already costs ~0.9x the hand-written loop
        # (this section's column), which no LightningModule can win back.
        vs_bare = statistics.median(b[0] / r[0] for r, b in zip(fw, bare))
        report.target(
            f"framework / bare Lightning, steps/s ({name} size)",
            f"{vs_bare:.2f}x (hand-written loop: framework {wall:.2f}x, CPU time {cpu:.2f}x; bare Lightning "
            f"{bare_ratio:.2f}x)", ">= 0.95x", vs_bare >= 0.95,
        )
    report.details.append(
        "### 1. Framework vs hand-written loop (logging=off, device=cpu)\n\n"
        f"{sizes.rounds} rounds (3 at the larger size); in each, the three sides run at the same time in processes "
        "of their own, taking turns of 50 ms on the machine (`interleaved` in attnlab/bench/harness.py), so that they meet "
        f"the same load. Steps/s over all but the first {sizes.warmup_steps} steps of a run, per second of a side's "
        "own turns; every figure is the median of the rounds. The CPU-time ratio counts process CPU seconds. "
        "Bare Lightning is Lightning's own floor: the same model, batches and AdamW in a LightningModule with "
        "nothing else (no callbacks, logger, checkpoints or accuracies; plain backward and step), so "
        "hand-written → bare Lightning is what Lightning's loop costs and bare Lightning → framework what attnlab "
        "adds.\n\n"
        + table(
            ["model", "hand-written steps/s", "bare Lightning steps/s", "framework steps/s", "bare Lightning / hand",
             "framework / hand", "framework / hand (CPU time)", "framework / hand, each round"],
            rows,
        )  # fmt: skip
    )

