"""A member of a stacked group: MemberTrainer, Member and member_checkpoint (its checkpoint in the solo format)."""

from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from omegaconf import DictConfig

from attnlab import train
from attnlab.data import TaskDataModule
from attnlab.module import AttentionLM
from attnlab.stacked.optim import StackedAdamW

# ---- a member: one run's pieces, from the solo path ----------------------------------------------------------------


class MemberTrainer:
    """What the solo path's per-run callbacks read from their trainer, for one member: its logger, its step (the
    group's, until the member stops), its data. They get this in place of the group's Trainer."""

    def __init__(self, member: "Member", trainer: L.Trainer):
        self.member, self.trainer = member, trainer
        self.sanity_checking = False

    @property
    def logger(self):
        return self.member.logger

    @property
    def global_step(self) -> int:
        return self.trainer.global_step if self.member.stopped_at is None else self.member.stopped_at

    @property
    def datamodule(self):
        return self.member.data


@dataclass
class Member:
    """One run of a stacked group: its config and directory, its solo view (an AttentionLM on this member's slices of
    the stacked weights), its data, its logger and its callbacks from train.run_callbacks; and how it ended."""

    cfg: DictConfig
    run_dir: Path
    task: object
    view: AttentionLM
    data: TaskDataModule
    callbacks: list = field(default_factory=list)
    logger: train.RunLogger | None = None
    stopped_at: int | None = None  # the step it stopped changing at (early stop, divergence)
    outcome: object = None  # its final metrics (dict), or the Diverged / Interrupted that ended it

    def callback(self, kind):
        return next((c for c in self.callbacks if isinstance(c, kind)), None)

    @property
    def active(self) -> bool:
        return self.stopped_at is None and self.outcome is None

    def factor(self, step: int) -> float:
        """The lr schedule's factor at `step` (the solo module's own)."""
        return self.view.lr_factor(step, self.cfg.trainer.max_steps)


def member_checkpoint(member: Member, k: int, trainer: L.Trainer, optimizer: StackedAdamW, step: int) -> dict:
    """Member k's checkpoint in the solo format, as its solo run's Trainer would save it at this step: its weights,
    its AdamW (and lr scheduler) state, the loop state with its own generator, its callbacks' state."""
    loops = trainer._checkpoint_connector._get_loops_state_dict()  # made afresh: only the loader's part is replaced
    fit_state = dict(loops["fit_loop"]["state_dict"])
    if loader := fit_state.get("combined_loader"):  # the stacked batches' state -> this member's generator and its
        # batches so far (one a step: a member never accumulates), as data.Batches saves them
        fit_state["combined_loader"] = [{"generator": loader[0]["generators"][k], "drawn": step}]
    loops["fit_loop"] = {**loops["fit_loop"], "state_dict": fit_state}
    view = member.view
    # torch.optim.AdamW (and LambdaLR) made for the solo module give the exact state_dict layout; the moments are
    # this member's.
    solo_optimizer = torch.optim.AdamW(view.parameters(), lr=member.cfg.optim.lr, weight_decay=member.cfg.optim.weight_decay)
    schedulers = []
    if member.cfg.optim.schedule != "constant" or member.cfg.optim.warmup_steps:
        scheduler = torch.optim.lr_scheduler.LambdaLR(solo_optimizer, lambda s: member.factor(s))
        state = scheduler.state_dict()
        lr = member.cfg.optim.lr * member.factor(step)
        state.update(last_epoch=step, _step_count=step + 1, _last_lr=[lr])
        solo_optimizer.param_groups[0]["lr"] = lr
        schedulers.append(state)
    optimizer_state = solo_optimizer.state_dict()
    optimizer_state["state"] = optimizer.member_state(k)
    callbacks = {c.state_key: c.state_dict() for c in member.callbacks if isinstance(c, (ModelCheckpoint, EarlyStopping))}
    return {
        "epoch": trainer.current_epoch,
        "global_step": step,
        "pytorch-lightning_version": L.__version__,
        "state_dict": {f"model.{name}": t.detach().cpu().clone() for name, t in view.model.state_dict().items()},
        "loops": loops,
        "callbacks": callbacks,
        "optimizer_states": [optimizer_state],
        "lr_schedulers": schedulers,
    }
