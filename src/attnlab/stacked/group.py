"""A stacked group, start to end: refusal, MEMBER_KEYS, group_key and train_group."""

import json
from pathlib import Path

import lightning.pytorch as L
from lightning.pytorch.callbacks import TQDMProgressBar
from omegaconf import DictConfig, OmegaConf

from attnlab import resume, train
from attnlab.config import ConfigError
from attnlab.guards import Interrupted, StopOnSignal
from attnlab.stacked.data import StackedData
from attnlab.stacked.members import Member
from attnlab.stacked.model import StackedModel
from attnlab.stacked.module import StackedLM

# ---- a group, start to end -----------------------------------------------------------------------------------------


def refusal(cfg: DictConfig) -> str | None:
    """Why a job cannot be a member of a stacked group (the launcher then launches it alone), or None. A config
    refused at config time is one: launched alone, it stops with its one line, as under any launcher."""
    try:
        train.build(cfg)
    except ConfigError as error:
        return f"refused: {error}"
    if cfg.get("ckpt_path"):
        return "it goes on from a checkpoint (ckpt_path)"
    if cfg.get("init_from"):
        return "it starts from a run's weights (init_from)"
    stacked = ("max_steps", "val_every_n_steps", "stop_at", "gradient_clip_val", "gradient_clip_algorithm")
    extra = [k for k, v in cfg.trainer.items() if k not in stacked and v not in (None, False, 0)]
    if extra:
        return f"trainer.{extra[0]} is a solo run's option"
    return None


# What members of one group may differ in; everything else fixes the shapes (or is the same for the group's one
# Trainer: its steps, validation and logging cadence, device).
MEMBER_KEYS = ("seed", "optim.lr", "optim.weight_decay", "optim.warmup_steps", "optim.schedule", "trainer.stop_at",
               "loss.attention", "optimized_metric")


def group_key(cfg: DictConfig) -> str:
    """Jobs with equal keys can be trained as one stacked model."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for dotted in MEMBER_KEYS:
        *path, last = dotted.split(".")
        node = container
        for part in path:
            node = node.get(part, {})
        node.pop(last, None)
    return json.dumps(container, sort_keys=True)


def train_group(cfgs: list[DictConfig], run_dirs: list[Path], extra_callbacks: list[L.Callback] = ()) -> list[Member]:
    """Train one group (same group_key) as a stacked model; every member's run directory is written as its solo
    run's. Returns the members, each with its outcome: final metrics, or the Diverged / Interrupted that ended it."""
    members = []
    for cfg, run_dir in zip(cfgs, run_dirs):
        L.seed_everything(cfg.seed, workers=True, verbose=False)  # as train.run: the initial weights from the seed
        task, view, data = train.build(cfg)
        logger = train.RunLogger(run_dir, name="", version="", default_hp_metric=False)
        train.log_config(logger, cfg, 0)
        members.append(Member(cfg, run_dir, task, view, data, train.run_callbacks(cfg, task, data, run_dir), logger))
    cfg = cfgs[0]
    module = StackedLM(StackedModel([m.view.model for m in members]), members)
    data = StackedData([m.data for m in members])
    stopper = StopOnSignal()  # one for the process: a signal stops every member, each saving its checkpoint
    # The group's Trainer: the solo run's settings, its progress bar, no logger or checkpoint of its own (each
    # member writes its own).
    callbacks = [stopper, *[c for c in members[0].callbacks if isinstance(c, TQDMProgressBar)]]
    trainer = train.make_trainer(cfg, run_dirs[0], False, callbacks + list(extra_callbacks), {"enable_checkpointing": False}, 1)
    try:
        trainer.fit(module, datamodule=data)
        for member in members:
            if member.active:
                module.save(member)  # the weights training ended with, as a solo run saves them after fit
        if stopper.stopped_at is not None:
            for member in members:
                if member.active:
                    member.logger.finalize("interrupted")
                    member.outcome = Interrupted(stopper.signum, trainer.global_step, trainer.global_step)
        elif any(m.active for m in members):
            module.final = {}
            trainer.validate(module, datamodule=data, verbose=False)
            for member in members:
                if member.active:
                    module.finish(member, module.final[id(member)], trainer.global_step)
    except SystemExit:  # a second Ctrl+C: stopped at once, each member keeps its last validation's checkpoint
        if stopper.signum is None:
            raise
        for member in members:
            if member.active:
                last = member.run_dir / resume.CHECKPOINT
                saved = resume.load_checkpoint(last)["global_step"] if last.is_file() else None
                member.outcome = Interrupted(stopper.signum, trainer.global_step, saved)
    finally:
        for member in members:
            member.logger.close()
    return members
