"""Alignment and entropy per head at every validation: one explicit-path forward over the validation set with
the attention weights returned (training steps keep the fast path). Logged through the LightningModule, so the
final `trainer.validate` returns them too and train.py writes them into metrics.json."""

import lightning.pytorch as L
import torch

from attnlab import alignment
from attnlab.tasks import Task


class AlignmentScalars(L.Callback):
    """align/layer{L}/head{H}, align/best (where the task has a target) and entropy/layer{L}/head{H}; with
    data.val_lengths, align/len{N}/layer{L}/head{H} and align/len{N}/best over each length's set too."""

    def __init__(self, task: Task):
        self.task = task
        # Per validation set (None: the training distribution's, else its length), per chunk, per layer: made once.
        self.targets: dict[int | None, list[list[torch.Tensor | None]]] = {}
        self.kinds: list[torch.Tensor] | None = None  # the head detectors' patterns, per chunk of the main set

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        data = trainer.datamodule
        sets = {None: data.validation[0], **{n: batch[0] for n, batch in data.validation_at.items()}}
        scalars = {k: v for length, inputs in sets.items() for k, v in self.scalars(inputs, module.model, length).items()}
        # Every rank scores the same whole validation set, so there is nothing to reduce across processes.
        module.log_dict(scalars, batch_size=len(sets[None]), sync_dist=False, rank_zero_only=False,
                        add_dataloader_idx=False)

    def scalars(self, inputs: torch.Tensor, model: torch.nn.Module, length: int | None = None) -> dict[str, float]:
        """The model's alignment and entropy scalars over a validation set's inputs (`length`: one of
        data.val_lengths, None for the training distribution's set)."""
        targets = self.chunk_targets(inputs, len(model.blocks), length)
        kinds = self.chunk_kinds(inputs, model.blocks[0].attention.causal) if length is None else None
        return alignment.measure(model, self.task, inputs, targets, kinds).scalars(length)

    def chunk_targets(self, inputs: torch.Tensor, layers: int, length: int | None = None) -> list[list[torch.Tensor | None]]:
        """The task's targets for a validation set's inputs, chunk by chunk (alignment.chunk_targets): made once (a
        stacked group's members share its first member's)."""
        if length not in self.targets:
            self.targets[length] = alignment.chunk_targets(self.task, inputs, layers)
        return self.targets[length]

    def chunk_kinds(self, inputs: torch.Tensor, causal: bool) -> list[torch.Tensor]:
        """The head detectors' patterns for the validation inputs, chunk by chunk (alignment.chunk_kinds): made
        once."""
        if self.kinds is None:
            self.kinds = alignment.chunk_kinds(self.task, inputs, causal)
        return self.kinds
