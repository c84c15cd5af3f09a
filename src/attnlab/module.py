"""The LightningModule: loss on the task's target positions, token and whole-sequence accuracy, AdamW."""

import math

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab import tags
from attnlab.model import AttentionModel
from attnlab.tasks import Batch


def loss(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Mean cross-entropy over masked positions only. No boolean indexing: that would sync with the device."""
    weight = mask.float()
    per_token = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # [batch, pos]
    return (per_token * weight).sum() / weight.sum()


def scores(logits: Tensor, targets: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Loss and accuracies over masked positions only."""
    weight = mask.float()
    right = (logits.argmax(-1) == targets) | ~mask  # positions outside the mask count as right
    return {
        "loss": loss(logits, targets, mask),
        "acc": ((right & mask).float().sum() / weight.sum()),
        "seq_acc": right.all(dim=1).float().mean(),
    }


class AttentionLM(L.LightningModule):
    def __init__(self, model: AttentionModel, lr: float, weight_decay: float, warmup_steps: int, schedule: str):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.warmup_steps, self.schedule = lr, weight_decay, warmup_steps, schedule
        # training_step writes the optimiser step out, as a plain PyTorch loop does: Lightning's automatic
        # optimisation wraps every step in a closure and a dozen more hook calls, ~8% of a default-size step
        # (issue 5).
        self.automatic_optimization = False

    def forward(self, tokens: Tensor, need_weights: bool = False):
        return self.model(tokens, need_weights)

    def _scores(self, batch: Batch) -> dict[str, Tensor]:
        inputs, targets, mask = batch
        logits, _ = self.model(inputs)
        return scores(logits, targets, mask)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        inputs, targets, mask = batch
        logits, _ = self.model(inputs)  # need_weights=False: the fused attention kernel
        n = self.trainer.log_every_n_steps
        if self.logger is None or not n or (self.global_step + 1) % n:
            result = {"loss": loss(logits, targets, mask)}  # accuracies only where they are written
        else:
            result = scores(logits, targets, mask)
            # Straight to the logger, at the steps and under the names Lightning's self.log would write them:
            # self.log's bookkeeping (it walks its whole result collection) cost more per call than a default-size
            # training step (issue 5), and a per-step train scalar needs none of it. One host sync for three.
            values = torch.stack(list(result.values())).tolist()
            self.logger.log_metrics({tags.metric("train", k): v for k, v in zip(result, values)}, step=self.global_step)

        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(result["loss"])
        optimizer.step()
        self.lr_schedulers().step()
        return result["loss"]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        result = self._scores(batch)
        self.log_dict({tags.metric("val", k): v for k, v in result.items()}, batch_size=len(batch[0]), prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total = self.trainer.max_steps

        def factor(step: int) -> float:
            if step < self.warmup_steps:
                return (step + 1) / self.warmup_steps
            if self.schedule == "cosine":
                progress = (step - self.warmup_steps) / max(1, total - self.warmup_steps)
                return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
            return 1.0

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}  # stepped every training step, in training_step
