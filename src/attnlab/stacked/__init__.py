"""Stacked training: K runs of the same shapes trained as one model whose weights have a leading member dimension.

One step trains every member for the overhead of one (one forward, one backward, one optimiser step, one pass of
Lightning's loop), and the arithmetic runs as one large batch. Each member stays a run of its own:

- the same initial weights and batch stream as its solo run (each member is built by train.build after seeding
  with its own seed, and draws its batches from its own generator);
- its own lr, weight decay, warm-up and schedule (StackedAdamW takes a per-member lr and weight decay);
- the loss is the sum of the members' mean losses, so each member's gradient is the one its solo run computes;
- its own run directory, written by the solo path's own pieces: its RunLogger, and the callbacks train.run_callbacks
  makes for it (frames, alignment, divergence, early stop, the checkpoint's state) called with a solo view of the
  member (`Member.view`: an AttentionLM whose parameters are that member's slices of the stacked ones);
- checkpoints/last.ckpt in the solo format (member_checkpoint), so inspect_run.py, resume=RUN_DIR and ckpt_path=
  work on it unchanged.

hydra_plugins/attnlab_stacked (hydra/launcher=stacked) groups a sweep's jobs and trains each group with
train_group.
"""

from attnlab.stacked.data import StackedBatches, StackedData
from attnlab.stacked.group import MEMBER_KEYS, group_key, refusal, train_group
from attnlab.stacked.members import Member, MemberTrainer, member_checkpoint
from attnlab.stacked.model import (StackedAttention, StackedBlock, StackedEmbedding, StackedLinear, StackedModel,
                                   StackedNorm)
from attnlab.stacked.module import LR_TAG, StackedLM
from attnlab.stacked.optim import StackedAdamW

__all__ = [
    "LR_TAG", "MEMBER_KEYS", "Member", "MemberTrainer", "StackedAdamW", "StackedAttention", "StackedBatches",
    "StackedBlock", "StackedData", "StackedEmbedding", "StackedLM", "StackedLinear", "StackedModel", "StackedNorm",
    "group_key", "member_checkpoint", "refusal", "train_group",
]
