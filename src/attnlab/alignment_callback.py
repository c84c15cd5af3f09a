"""Alignment and entropy per head at every validation: one explicit-path forward over the validation set with
the attention weights returned (training steps keep the fast path). Logged through the LightningModule, so the
final `trainer.validate` returns them too and train.py writes them into metrics.json."""

import lightning.pytorch as L
import torch

from attnlab import alignment
from attnlab.tasks import Task


class AlignmentScalars(L.Callback):
    """align/layer{L}/head{H}, align/best (where the task has a target) and entropy/layer{L}/head{H}."""

    def __init__(self, task: Task):
        self.task = task
        self.targets: list[list[torch.Tensor | None]] | None = None  # per chunk, per layer: made once
        self.kinds: list[torch.Tensor] | None = None  # per chunk, the head detectors' patterns: made once

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        inputs = trainer.datamodule.validation[0]
        # Every rank scores the same whole validation set, so there is nothing to reduce across processes.
        module.log_dict(self.scalars(inputs, module.model), batch_size=len(inputs), sync_dist=False, rank_zero_only=False)

    def scalars(self, inputs: torch.Tensor, model: torch.nn.Module) -> dict[str, float]:
        """The model's alignment and entropy scalars over the validation inputs."""
        causal = model.blocks[0].attention.causal
        targets = self.chunk_targets(inputs, len(model.blocks))
        return alignment.measure(model, self.task, inputs, targets, self.chunk_kinds(inputs, causal)).scalars()

    def chunk_targets(self, inputs: torch.Tensor, layers: int) -> list[list[torch.Tensor | None]]:
        """The task's targets for the validation inputs, chunk by chunk (alignment.chunk_targets): made once (a
        stacked group's members share its first member's)."""
        if self.targets is None:
            self.targets = alignment.chunk_targets(self.task, inputs, layers)
        return self.targets

    def chunk_kinds(self, inputs: torch.Tensor, causal: bool) -> list[torch.Tensor]:
        """The head detectors' patterns for the validation inputs, chunk by chunk (alignment.chunk_kinds): made
        once."""
        if self.kinds is None:
            self.kinds = alignment.chunk_kinds(inputs, causal)
        return self.kinds
