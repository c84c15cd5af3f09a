"""The LightningModule: loss on the task's target positions, token and whole-sequence accuracy, AdamW."""

import math

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor

from attnlab import tags
from attnlab.alignment import rasp_supervision_loss, real_positions, supervision_loss
from attnlab.model import AttentionModel
from attnlab.tasks import Batch, Task


def loss(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Mean cross-entropy over masked positions only. No boolean indexing: that would sync with the device."""
    weight = mask.float()
    per_token = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # [batch, pos]
    return (per_token * weight).sum() / weight.sum()


# What Lightning's manual_backward and LightningOptimizer.step call besides the backward and the step themselves.
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


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
    def __init__(self, model: AttentionModel, lr: float, weight_decay: float, warmup_steps: int, schedule: str,
                 attention_loss: float = 0.0, task: Task | None = None, gradient_clip_val: float | None = None,
                 gradient_clip_algorithm: str | None = None, accumulate_grad_batches: int = 1,
                 attention_form: str = "rows"):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.warmup_steps, self.schedule = lr, weight_decay, warmup_steps, schedule
        # loss.attention: the weight of the attention-supervision term, and the task whose targets it uses.
        self.attention_weight, self.task = attention_loss, task
        self.attention_form = attention_form  # loss.attention_form: rows (supervision_loss) or rasp (RASP-exps's)
        # trainer.gradient_clip_val / gradient_clip_algorithm / accumulate_grad_batches, done in training_step.
        self.gradient_clip_val, self.gradient_clip_algorithm = gradient_clip_val, gradient_clip_algorithm or "norm"
        self.accumulate_grad_batches = accumulate_grad_batches
        # training_step writes the optimiser step out, as a plain PyTorch loop does: Lightning's automatic
        # optimisation wraps every step in a closure and a dozen more hook calls, a share of a step that shows at
        # toy sizes (python scripts/bench.py --sections loop: the framework against a hand-written loop).
        self.automatic_optimization = False
        self.plain_steps = False  # decided at the start of training (on_train_start)

    def forward(self, tokens: Tensor, need_weights: bool = False):
        return self.model(tokens, need_weights)

    def _scores(self, batch: Batch) -> dict[str, Tensor]:
        inputs, targets, mask = batch
        logits, _ = self.model(inputs)
        return scores(logits, targets, mask)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        inputs, targets, mask = batch
        supervised = self.attention_weight > 0
        logits, attention = self.model(inputs, need_weights=supervised)  # unsupervised: the fused attention kernel
        # With trainer.accumulate_grad_batches=N the optimiser steps on every N-th batch, over the mean of their
        # gradients; what is logged is the batch that takes the step.
        stepping = (batch_idx + 1) % self.accumulate_grad_batches == 0
        n = self.trainer.log_every_n_steps
        logged = stepping and self.logger is not None and n and (self.global_step + 1) % n == 0
        # Accuracies only where they are written.
        result = scores(logits, targets, mask) if logged else {"loss": loss(logits, targets, mask)}
        if supervised:
            result["attention_loss"] = self.attention_loss(inputs, attention)
        if logged:
            # Straight to the logger, at the steps and under the names Lightning's self.log would write them:
            # self.log's bookkeeping (it walks its whole result collection on every call) costs about as much as a
            # toy model's whole training step, and a per-step train scalar needs none of it. One host sync for them
            # all.
            values = torch.stack(list(result.values())).tolist()
            metrics = {tags.metric("train", k): v for k, v in zip(result, values)}
            self.logger.log_metrics(metrics, step=self.global_step)
            # Where self.log would put them for callbacks too: a user's EarlyStopping or ModelCheckpoint that
            # monitors train/loss finds it.
            self.trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        objective = self.objective(result)
        if self.accumulate_grad_batches > 1:
            objective = objective / self.accumulate_grad_batches  # as Lightning's automatic optimisation scales it
        self.optimise(objective, stepping)
        return result["loss"]

    def optimise(self, objective: Tensor, stepping: bool) -> None:
        """Backward; then, on the batch that ends an accumulation cycle, clipping, the optimiser step and the lr
        schedule's step, in the order Lightning's automatic optimisation takes them."""
        if self.plain_steps:
            objective.backward()
        else:
            self.manual_backward(objective)
        if not stepping:
            return
        optimizer = self.optimizers(use_pl_optimizer=not self.plain_steps)
        if self.gradient_clip_val:
            # Lightning's own clipping (its precision plugin's clip_grad_norm_ / clip_grad_value_ over the
            # optimiser's parameters), which it refuses to do by itself under manual optimisation.
            self.clip_gradients(optimizer, self.gradient_clip_val, self.gradient_clip_algorithm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.plain_steps:
            # The optimiser-step count Lightning keeps (trainer.global_step, and the checkpoint's loop state), as
            # LightningOptimizer.step would count it.
            progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
            progress.increment_ready()
            progress.increment_completed()
        if scheduler := self.lr_schedulers():
            scheduler.step()

    def attention_loss(self, inputs: Tensor, attention: list[Tensor]) -> Tensor:
        """loss.attention's term: per layer with a target, the supervision loss of its head 0 (the head asked to do
        that step of the mechanism; the layer's other heads are free), or with per-head targets (Task.head_targets)
        of each head h against its own target h; averaged over the supervised heads. loss.attention_form=rasp
        takes RASP-exps's form of the term (alignment.rasp_supervision_loss)."""
        keep = real_positions(self.task, inputs) if self.attention_form == "rasp" else None
        losses = []
        for layer, weights in enumerate(attention):  # [batch, head, query, key]
            if (target := self.task.layer_targets(inputs, layer)) is None:
                continue
            target = target.to(weights.device)
            pairs = [(weights[:, 0], target)] if target.dim() == 3 else [
                (weights[:, h], target[:, h]) for h in range(target.shape[1])]
            for head, wanted in pairs:
                if self.attention_form == "rasp":
                    losses.append(rasp_supervision_loss(head, wanted, keep))
                else:
                    losses.append(supervision_loss(head, wanted))
        return torch.stack(losses).mean()

    def objective(self, result: dict[str, Tensor]) -> Tensor:
        """What is minimised: the task loss, plus loss.attention times the supervision term where it is on."""
        if "attention_loss" not in result:
            return result["loss"]
        return result["loss"] + self.attention_weight * result["attention_loss"]

    def on_train_start(self) -> None:
        # manual_backward and LightningOptimizer.step are the plain backward and step plus, around them, the
        # STEP_HOOKS called on every callback and on this module, precision and strategy plumbing and profiler
        # regions, ~0.3 ms of a default-size step (python scripts/train.py debug=profiler times them: a profiler
        # turns the plain path off). Where all of that does nothing (full precision,
        # one process, no profiler, nothing overriding a STEP_HOOK) training_step calls the plain ones. A
        # callback that overrides one of the hooks (gradient-norm logging, say) gets Lightning's path and its calls.
        trainer = self.trainer
        listeners = [c for c in trainer.callbacks if any(is_overridden(h, c, L.Callback) for h in STEP_HOOKS)]
        listeners += [self] if any(is_overridden(h, self, L.LightningModule) for h in STEP_HOOKS) else []
        self.plain_steps = (
            type(trainer.strategy) is SingleDeviceStrategy
            and type(trainer.precision_plugin) is Precision
            and type(trainer.profiler) is PassThroughProfiler
            and not listeners
        )

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        result = self._scores(batch)
        self.log_dict(self.validation_names(result, dataloader_idx), batch_size=len(batch[0]), prog_bar=not dataloader_idx,
                      add_dataloader_idx=False)

    def validation_names(self, result: dict, dataloader_idx: int) -> dict:
        """val/{metric} for the training distribution's set (dataloader 0); val/len{N}/{metric} for the set of
        data.val_lengths[i - 1] (TaskDataModule.val_dataloader's order)."""
        if not dataloader_idx:
            return {tags.metric("val", k): v for k, v in result.items()}
        stage = tags.length_stage(self.trainer.datamodule.val_lengths[dataloader_idx - 1])
        return {tags.metric(stage, k): v for k, v in result.items()}

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total = self.trainer.max_steps

        def factor(step: int) -> float:
            return self.lr_factor(step, total)

        if self.schedule == "constant" and not self.warmup_steps:
            return optimizer  # no scheduler: one would only set the same lr at every step
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}  # stepped every training step, in training_step

    def lr_factor(self, step: int, total: int) -> float:
        """optim.lr's multiplier at optimiser step `step` of `total`: linear warm-up, then constant or cosine."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "cosine":
            progress = (step - self.warmup_steps) / max(1, total - self.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0
