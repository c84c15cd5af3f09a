"""The stacked LightningModule: StackedLM, and LR_TAG (the lr's tag each member logs)."""

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import Tensor, nn

from attnlab import alignment, resume, tags, train
from attnlab.alignment_callback import AlignmentScalars
from attnlab.data import VALIDATION_BATCH
from attnlab.callbacks import AttentionImages
from attnlab.guards import Diverged, StopOnDivergence
from attnlab.stacked.members import Member, MemberTrainer, member_checkpoint
from attnlab.stacked.model import StackedModel
from attnlab.stacked.optim import StackedAdamW

# ---- the LightningModule -------------------------------------------------------------------------------------------


class MembersAsHeads(nn.Module):
    """The stacked model as alignment.measure sees one model: tokens [batch, pos] given to every member, and each
    layer's weights [batch, member * head, query, key], so one explicit-path pass scores every member's heads."""

    def __init__(self, model: StackedModel):
        super().__init__()
        self.model, self.blocks = model, model.blocks

    def forward(self, tokens: Tensor, need_weights: bool = True) -> tuple[Tensor, list[Tensor]]:
        members = self.model.embedding.weight.shape[0]
        logits, attention = self.model(tokens.expand(members, *tokens.shape), need_weights)
        return logits, [weights.transpose(0, 1).flatten(1, 2) for weights in attention]


class StackedLM(L.LightningModule):
    """Trains a StackedModel; each member logs, validates, stops and saves as its solo run would, through the solo
    path's callbacks (called here once per member, with MemberTrainer and the member's view).

    `members` are the members still stacked, in the stack's order: one that stops or fails is dropped from the
    model (compact), so that the steps after cost only the members still training."""

    def __init__(self, model: StackedModel, members: list[Member]):
        super().__init__()
        self.model = model
        self.members = list(members)  # a plain list: the views' parameters are the stacked ones, not more parameters
        self.automatic_optimization = False
        # Per validation set: [member, 3] loss, acc, seq_acc summed over its examples; the examples; the tally.
        self.val_sums: dict[int, Tensor] = {}
        self.val_count: dict[int, int] = {}
        self.tally: dict[int, alignment.Tally] = {}

    def forward(self, tokens: Tensor, need_weights: bool = False):
        return self.model(tokens, need_weights)

    @staticmethod
    def member_scores(logits: Tensor, targets: Tensor, mask: Tensor, all_scores: bool) -> Tensor:
        """module.loss (and module.scores' accuracies) of each member, in one pass: logits [member, batch, pos,
        vocab] -> [member] losses, or [member, 3] (loss, acc, seq_acc) with all_scores."""
        weight = mask.float()
        per_token = F.cross_entropy(logits.flatten(0, 1).transpose(1, 2), targets.flatten(0, 1), reduction="none")
        counted = weight.sum((1, 2))
        losses = (per_token.view(targets.shape) * weight).sum((1, 2)) / counted
        if not all_scores:
            return losses
        right = (logits.argmax(-1) == targets) | ~mask  # positions outside the mask count as right
        acc = (right & mask).float().sum((1, 2)) / counted
        return torch.stack([losses, acc, right.all(dim=2).float().mean(1)], dim=1)

    # -- training

    def configure_optimizers(self):
        decay = torch.tensor([m.cfg.optim.weight_decay for m in self.members])
        return StackedAdamW(self.model.parameters(), decay)

    def point_views(self) -> None:
        """Each member's solo view sees its slices of the stacked weights, wherever they now are."""
        stacked = dict(self.model.named_parameters())
        for k, member in enumerate(self.members):
            member.view.to(self.device)
            for name, param in member.view.model.named_parameters():
                param.data = stacked[name].data[k]

    def on_fit_start(self) -> None:
        self.point_views()
        optimizer = self.optimizers(use_pl_optimizer=False)
        optimizer.to(self.device)
        self.attention_weights = torch.tensor([m.view.attention_weight for m in self.members], device=self.device)
        # Every member's lr at every step, from its own schedule: [step, member] (one row read per step). A schedule
        # is computed once for all the members that share it (a sweep over seeds: one for all).
        steps, schedules = self.trainer.max_steps, {}
        columns = []
        for m in self.members:
            shape = (m.cfg.optim.warmup_steps, m.cfg.optim.schedule)
            if shape not in schedules:
                schedules[shape] = torch.tensor([m.factor(s) for s in range(steps + 1)], dtype=torch.float64)
            columns.append(m.cfg.optim.lr * schedules[shape])
        self.lr_table = torch.stack(columns, dim=1).float().to(self.device)

    def on_train_start(self) -> None:
        for member in self.members:
            if images := member.callback(AttentionImages):
                images.on_train_start(MemberTrainer(member, self.trainer), member.view)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        if not all(m.active for m in self.members):
            self.compact()
        *tensors, drawn_for = batch  # [member, batch, pos] each, and the members they were drawn for
        stacked = tuple(id(m.data) for m in self.members)
        if drawn_for != stacked:  # drawn (a batch ahead) before members were dropped: their rows go
            rows = torch.tensor([drawn_for.index(i) for i in stacked], device=self.device)
            tensors = [t[rows] for t in tensors]
        inputs, targets, mask = tensors
        supervised = bool(self.attention_weights.any())  # loss.attention: the explicit path, for its weights
        logits, attention = self.model(inputs, need_weights=supervised)  # [member, batch, pos, vocab]
        step, n = self.global_step, self.trainer.log_every_n_steps
        logged = (step + 1) % n == 0
        scores = self.member_scores(logits, targets, mask, logged)  # [member, 3] logged, else [member]
        losses = objectives = scores[:, 0] if logged else scores
        if supervised:
            attention_losses = self.attention_losses(inputs, attention)  # [member]
            objectives = losses + self.attention_weights * attention_losses
        optimizer = self.optimizers()
        active = optimizer.optimizer.active
        # The sum of the members' mean losses: each member's gradient is its solo run's (a mean would scale it).
        objective = torch.where(active, objectives, 0.0).sum()
        optimizer.optimizer.lr = self.lr_table[step]
        self.manual_backward(objective)
        solo = self.members[0].view  # trainer.* is the same for the whole group
        if solo.gradient_clip_val:
            self.clip_members(solo.gradient_clip_val, solo.gradient_clip_algorithm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if logged:
            values, lrs = scores.tolist(), self.lr_table[step].tolist()
            supervision = attention_losses.tolist() if supervised else [None] * len(values)
            for member, row, lr, term in zip(self.members, values, lrs, supervision):
                if member.active:
                    metrics = {tags.metric("train", name): v for name, v in zip(tags.METRICS, row)}
                    if member.view.attention_weight > 0:
                        metrics[tags.ATTENTION_LOSS] = term
                    member.logger.log_metrics({**metrics, LR_TAG: lr}, step=step)
        self.last_losses = losses.detach()
        return objective

    def slot(self, member: Member) -> int:
        """Where a member sits in the stack now."""
        return next(k for k, m in enumerate(self.members) if m is member)

    def compact(self) -> None:
        """Drops the members that stopped or failed from the stack: the model's weights, the optimiser's state, the
        lr table, the data. A dropped member keeps what it ended with: its solo view's weights are slices of the
        old tensors, and it has saved its checkpoint and written its last records."""
        kept = [k for k, m in enumerate(self.members) if m.active]
        if not kept:  # the group is done (Lightning stops it before another step)
            return
        index = torch.tensor(kept, device=self.device)
        self.model.keep(index)
        self.optimizers(use_pl_optimizer=False).keep(index, list(self.model.parameters()))
        self.members = [self.members[k] for k in kept]
        self.lr_table, self.attention_weights = self.lr_table[:, index], self.attention_weights[index]
        self.trainer.datamodule.keep([m.data for m in self.members])
        self.point_views()

    def attention_losses(self, inputs: Tensor, attention: list[Tensor]) -> Tensor:
        """loss.attention's supervision term of each member: its solo module's own, on its slice of the weights;
        0 for a member without it.  [member]"""
        terms = [
            member.view.attention_loss(inputs[k], [weights[k] for weights in attention])
            if member.view.attention_weight > 0 else inputs.new_zeros((), dtype=torch.float)
            for k, member in enumerate(self.members)
        ]
        return torch.stack(terms)

    @torch.no_grad()
    def clip_members(self, value: float, algorithm: str) -> None:
        """trainer.gradient_clip_val for each member over its own gradients, as Lightning clips a solo run's
        (torch.nn.utils.clip_grad_norm_: the global norm, here per member; or clip_grad_value_)."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if algorithm == "value":
            for grad in grads:
                grad.clamp_(-value, value)
            return
        norms = torch.stack([grad.flatten(1).norm(dim=1) for grad in grads], dim=1).norm(dim=1)  # [member]
        coefficient = (value / (norms + 1e-6)).clamp(max=1.0)
        for grad in grads:
            grad.mul_(coefficient.view((-1,) + (1,) * (grad.dim() - 1)))

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        step = self.trainer.global_step
        checks = [m.callback(StopOnDivergence) for m in self.members]
        every, val_every = checks[0].every_n_steps, checks[0].val_every_n_steps
        if not step % every or not step % val_every:  # the solo guard's cadence: one host read for all members
            for member, check, loss in zip(self.members, checks, self.last_losses.tolist()):
                if member.active:
                    try:
                        check.check_loss(step, loss)
                    except Diverged as error:
                        self.fail(member, error)
        for member in self.members:
            if member.active and (images := member.callback(AttentionImages)):
                images.on_train_batch_end(MemberTrainer(member, self.trainer), member.view)
        if not any(m.active for m in self.members):
            self.trainer.should_stop = True

    def fail(self, member: Member, error: Diverged) -> None:
        """A diverged member: frozen (dropped at the next step), its checkpoint of the last validation kept, the solo
        run's message."""
        k = self.slot(member)
        self.optimizers(use_pl_optimizer=False).active[k] = False
        member.stopped_at = self.trainer.global_step
        member.outcome = train.diverged(error, member.run_dir)
        if images := member.callback(AttentionImages):
            images.close()

    # -- validation

    def on_validation_epoch_start(self) -> None:
        # Keyed by Lightning's dataloader index: 0 the training distribution's set, i that of data.val_lengths[i - 1].
        self.val_sums, self.val_count, self.tally = {}, {}, {}

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """The members' val/* sums and their alignment and entropy, from one explicit-path pass (a solo run makes
        two: its validation step, then AlignmentScalars), in alignment.CHUNK examples at a time."""
        data, scorer = self.trainer.datamodule, self.members[0].callback(AlignmentScalars)
        length = data.val_lengths[dataloader_idx - 1] if dataloader_idx else None
        inputs = (data.validation if length is None else data.validation_at[length])[0]
        targets_per_chunk = scorer.chunk_targets(inputs, len(self.model.blocks), length)
        # the head detectors on the training distribution's set only, as a solo run scores them
        kinds_per_chunk = scorer.chunk_kinds(inputs, self.model.blocks[0].attention.causal) if length is None else None
        tally = self.tally.setdefault(dataloader_idx, alignment.Tally())
        members = MembersAsHeads(self.model)
        for start in range(0, len(batch[0]), alignment.CHUNK):
            chunk, targets, mask = (t[start : start + alignment.CHUNK] for t in batch)
            logits, attention = members(chunk, need_weights=True)  # [member, chunk, ...]; [chunk, member * head, ...]
            k = len(self.members)
            sums = self.member_scores(logits, targets.expand(k, *targets.shape), mask.expand(k, *mask.shape), True)
            self.val_sums[dataloader_idx] = self.val_sums.get(dataloader_idx, 0.0) + sums * len(chunk)
            self.val_count[dataloader_idx] = self.val_count.get(dataloader_idx, 0) + len(chunk)
            # The chunk's targets, as alignment.chunk_targets cuts the validation inputs (VALIDATION_BATCH is a
            # multiple of CHUNK, so a batch's chunks are those).
            c = (batch_idx * VALIDATION_BATCH + start) // alignment.CHUNK
            kinds = None if kinds_per_chunk is None else kinds_per_chunk[c].to(chunk.device)
            tally.add(attention, targets_per_chunk[c], alignment.real_positions(scorer.task, chunk), kinds)

    def validation_metrics(self) -> list[dict[str, float]]:
        """Every stacked member's validation metrics, as its solo run logs them: val/*, align/* and entropy/* (its
        heads' share of the tally), and with data.val_lengths val/len{N}/* and align/len{N}/*."""
        lengths = [None, *self.trainer.datamodule.val_lengths]
        metrics = [{} for _ in self.members]

        def member(k: int, per_layer: list[Tensor | None]) -> list[Tensor | None]:
            # [member * head] -> [head]; per-head targets' [selector, member * head] -> [selector, head]
            return [None if t is None else t.unflatten(-1, (len(self.members), -1)).select(-2, k) for t in per_layer]

        for i, length in enumerate(lengths):
            stage = "val" if length is None else tags.length_stage(length)
            means = (self.val_sums[i] / self.val_count[i]).tolist()
            report = self.tally[i].report()
            for k in range(len(self.members)):
                metrics[k].update({tags.metric(stage, name): v for name, v in zip(tags.METRICS, means[k])})
                kinds = [dict(zip(per_kind, member(k, list(per_kind.values())))) for per_kind in report.kinds]
                metrics[k].update(alignment.Report(member(k, report.align), member(k, report.entropy), kinds).scalars(length))
        return metrics

    def on_validation_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        fitting = self.trainer.state.fn == "fit"
        step = self.trainer.global_step
        scalars = self.validation_metrics()
        optimizer = self.optimizers(use_pl_optimizer=False) if fitting else None
        for k, member in enumerate(self.members):
            if not member.active:
                continue
            metrics = scalars[k]
            if not fitting:  # the final scoring of the weights training ended with
                self.final[id(member)] = metrics
                continue
            # Logged where Lightning logs a solo run's validation: at step - 1, with the epoch.
            member.logger.log_metrics({**metrics, "epoch": float(self.trainer.current_epoch)}, step=step - 1)
            try:
                member.callback(StopOnDivergence).check_weights(step, member.view.named_parameters())
            except Diverged as error:
                self.fail(member, error)
                continue
            stopper = member.callback(EarlyStopping)
            if stopper is not None and stopper._evaluate_stopping_criteria(torch.tensor(metrics["val/seq_acc"]))[0]:
                # Reached trainer.stop_at: frozen at this step, finished as its solo run finishes.
                optimizer.active[k] = False
                member.stopped_at = step
                self.save(member)
                self.finish(member, metrics, step)
                continue
            self.save(member)
        if fitting and not any(m.active for m in self.members):
            self.trainer.should_stop = True

    def save(self, member: Member) -> None:
        """checkpoints/last.ckpt of a stacked member, in the solo format, written atomically over the one before."""
        step = member.stopped_at if member.stopped_at is not None else self.trainer.global_step
        k = self.slot(member)
        checkpoint = member_checkpoint(member, k, self.trainer, self.optimizers(use_pl_optimizer=False), step)
        path = member.run_dir / resume.CHECKPOINT
        if mc := member.callback(ModelCheckpoint):  # its state as the solo callback keeps it after a save
            mc.best_model_path = mc.last_model_path_saved = str(path)
            checkpoint["callbacks"][mc.state_key] = mc.state_dict()
        self.trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, path)

    def finish(self, member: Member, metrics: dict[str, float], step: int) -> None:
        """What a solo run does once training is over: the last frame, the final metrics (logged, HParams,
        metrics.json)."""
        if images := member.callback(AttentionImages):
            images.on_train_end(MemberTrainer(member, self.trainer), member.view)
        # The epoch as its solo run's final validation logs it: after fit, its one epoch done (a member stopped
        # early is mid-epoch here, where its solo run would have ended the epoch).
        epoch = self.trainer.current_epoch + (member.stopped_at is not None)
        member.logger.log_metrics({**metrics, "epoch": float(epoch)}, step=step)
        member.outcome = train.finish(member.logger, member.cfg, dict(metrics), step, member.run_dir)

    def on_train_end(self) -> None:
        # The last frame of every member still training, however training ended (as Lightning's on_train_end
        # gives a solo run's AttentionImages).
        for member in self.members:
            if member.active and (images := member.callback(AttentionImages)):
                images.on_train_end(MemberTrainer(member, self.trainer), member.view)

    def on_exception(self, exception: BaseException) -> None:
        for member in self.members:
            if images := member.callback(AttentionImages):
                images.close()


LR_TAG = "lr-AdamW"  # LearningRateMonitor's name for a solo run's lr (one AdamW)
