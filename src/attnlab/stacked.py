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

import math
import json
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from attnlab import resume, tags, train
from attnlab.config import ConfigError
from attnlab.alignment_callback import AlignmentScalars
from attnlab.callbacks import AttentionImages
from attnlab.data import VALIDATION_BATCH, Chunks, TaskDataModule
from attnlab.guards import Diverged, Interrupted, StopOnDivergence, StopOnSignal
from attnlab.model import AttentionModel
from attnlab.module import AttentionLM

# ---- the model: every weight with a leading member dimension -------------------------------------------------------


class StackedLinear(nn.Module):
    """nn.Linear for each member: weight [member, out, in], bias [member, out]; x [member, ..., in]."""

    def __init__(self, members: int, fan_in: int, fan_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(members, fan_out, fan_in))
        self.bias = nn.Parameter(torch.zeros(members, fan_out))

    def forward(self, x: Tensor) -> Tensor:
        members, *rest, fan_in = x.shape
        flat = x.reshape(members, -1, fan_in)  # [member, rows, in]
        out = torch.baddbmm(self.bias.unsqueeze(1), flat, self.weight.transpose(1, 2))  # [member, rows, out]
        return out.view(members, *rest, -1)


class StackedNorm(nn.Module):
    """nn.LayerNorm(dim) for each member: weight and bias [member, dim]; x [member, batch, pos, dim]."""

    def __init__(self, members: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, dim))
        self.bias = nn.Parameter(torch.zeros(members, dim))

    def forward(self, x: Tensor) -> Tensor:
        normed = F.layer_norm(x, x.shape[-1:])
        return normed * self.weight[:, None, None] + self.bias[:, None, None]


class StackedEmbedding(nn.Module):
    """nn.Embedding for each member: weight [member, vocab, dim]; tokens [member, batch, pos]."""

    def __init__(self, members: int, vocab: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(members, vocab, dim))
        # One lookup in the members' tables laid end to end: member k's token t is row k * vocab + t.
        self.register_buffer("offsets", torch.arange(members).view(members, 1, 1) * vocab, persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        members, vocab, dim = self.weight.shape
        return F.embedding(tokens + self.offsets, self.weight.view(members * vocab, dim))


class StackedAttention(nn.Module):
    """attention.SelfAttention for each member: W_Q, W_K, W_V, W_O [member, dim, dim], applied as x @ W. The members
    are folded into the batch dimension, so one scaled_dot_product_attention call covers them all (the fused path
    that training steps take); with need_weights, the article's steps 3-5 written out (for loss.attention)."""

    def __init__(self, members: int, dim: int, heads: int, causal: bool):
        super().__init__()
        self.dim, self.heads, self.d_head, self.causal = dim, heads, dim // heads, causal
        self.W_Q, self.W_K, self.W_V, self.W_O = (nn.Parameter(torch.zeros(members, dim, dim)) for _ in range(4))

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """x [member, batch, pos, dim] -> (output [member, batch, pos, dim], weights [member, batch, head, query,
        key] or None)."""
        members, batch, pos, dim = x.shape
        flat = x.reshape(members, batch * pos, dim)
        # Query, key and value in one batched matmul (one kernel instead of three), split into heads.
        # [member, batch * pos, 3 * dim] -> 3 x [member * batch, head, pos, d_head]
        projected = torch.bmm(flat, torch.cat((self.W_Q, self.W_K, self.W_V), dim=2))
        query, key, value = (self._split_heads(t, batch) for t in projected.split(dim, dim=2))
        weights = None
        if not need_weights:
            output = F.scaled_dot_product_attention(query, key, value, is_causal=self.causal)
        else:
            scores = query @ key.transpose(-2, -1) / math.sqrt(self.d_head)  # [member * batch, head, query, key]
            if self.causal:
                future = torch.ones(pos, pos, dtype=torch.bool, device=scores.device).triu(1)
                scores = scores.masked_fill(future, float("-inf"))
            weights = scores.softmax(dim=-1)
            output = weights @ value
            weights = weights.view(members, batch, self.heads, pos, pos)
        merged = output.transpose(1, 2).reshape(members, batch * pos, dim)  # heads concatenated
        return torch.bmm(merged, self.W_O).view(members, batch, pos, dim), weights

    def _split_heads(self, t: Tensor, batch: int) -> Tensor:
        members, rows, _ = t.shape  # [member, batch * pos, dim] -> [member * batch, head, pos, d_head]
        return t.view(members * batch, rows // batch, self.heads, self.d_head).transpose(1, 2)


class StackedBlock(nn.Module):
    """model.Block for each member, with the same submodule names (so member state_dicts map one to one)."""

    def __init__(self, members: int, dim: int, heads: int, causal: bool, mlp: bool, norm: bool):
        super().__init__()
        self.attention = StackedAttention(members, dim, heads, causal)
        self.norm1 = StackedNorm(members, dim) if norm else nn.Identity()
        self.norm2 = StackedNorm(members, dim) if norm and mlp else nn.Identity()
        self.mlp = None
        if mlp:
            self.mlp = nn.Sequential(StackedLinear(members, dim, 4 * dim), nn.GELU(), StackedLinear(members, 4 * dim, dim))

    def forward(self, x: Tensor, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        attended, weights = self.attention(self.norm1(x), need_weights)
        x = x + attended
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x, weights


class StackedModel(nn.Module):
    """K AttentionModels of the same shapes as one: tokens [member, batch, pos] -> logits [member, batch, pos, vocab].

    Its state_dict has the solo model's keys, each tensor with a leading member dimension: member k's solo
    state_dict is {name: tensor[k]} (member_state), and load_member puts one back."""

    def __init__(self, solo_models: list[AttentionModel]):
        super().__init__()
        first, members = solo_models[0], len(solo_models)
        attention = first.blocks[0].attention
        vocab, dim = first.embedding.weight.shape
        mlp, norm = first.blocks[0].mlp is not None, isinstance(first.norm, nn.LayerNorm)
        self.embedding = StackedEmbedding(members, vocab, dim)
        if isinstance(first.positions, nn.Parameter):  # learned: one table per member
            self.positions = nn.Parameter(torch.zeros(members, *first.positions.shape))
        else:  # sinusoidal or none: a fixed table, the same for every member
            self.register_buffer("positions", first.positions.clone(), persistent=False)
        self.blocks = nn.ModuleList(
            StackedBlock(members, dim, attention.heads, attention.causal, mlp, norm) for _ in first.blocks
        )
        self.norm = StackedNorm(members, dim) if norm else nn.Identity()
        self.readout = StackedLinear(members, dim, vocab)
        if self.state_dict().keys() != first.state_dict().keys():
            raise ValueError("the stacked model's parameters do not mirror the solo model's")
        with torch.no_grad():
            for k, model in enumerate(solo_models):
                self.load_member(k, model.state_dict())

    def forward(self, tokens: Tensor, need_weights: bool = False) -> tuple[Tensor, list[Tensor]]:
        """tokens [member, batch, pos] -> (logits [member, batch, pos, vocab], per layer weights [member, batch,
        head, query, key] where need_weights)."""
        members, batch, pos = tokens.shape
        positions = self.positions[..., :pos, :]  # [member, pos, dim] learned, [pos, dim] fixed
        x = self.embedding(tokens) + (positions.unsqueeze(1) if positions.dim() == 3 else positions)
        attention = []
        for block in self.blocks:
            x, weights = block(x, need_weights)  # [member, batch, pos, dim]
            if need_weights:
                attention.append(weights)
        return self.readout(self.norm(x)), attention

    def member_state(self, k: int) -> dict[str, Tensor]:
        """Member k's weights as a solo AttentionModel state_dict (views of the stacked tensors)."""
        return {name: tensor[k] for name, tensor in self.state_dict().items()}

    @torch.no_grad()
    def load_member(self, k: int, state: dict[str, Tensor]) -> None:
        """A solo AttentionModel state_dict into member k."""
        for name, tensor in self.state_dict().items():
            tensor[k].copy_(state[name])


# ---- the optimiser: AdamW with a learning rate, a weight decay and a step count per member --------------------------


class StackedAdamW(torch.optim.Optimizer):
    """torch.optim.AdamW's update (its single-tensor path, the one it takes on the CPU), for parameters whose first
    dimension is the member, with lr, weight_decay and the step count per member ([member] tensors). `active`
    [member] bool: a member that is not (stopped, failed) is not moved at all: neither its weights, nor its moments,
    nor its step count. The lr is set before each step (StackedLM: the member's schedule at that step)."""

    def __init__(self, params, weight_decay: Tensor, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, dict(betas=betas, eps=eps))
        members = len(weight_decay)
        self.lr = torch.zeros(members)
        self.weight_decay = weight_decay.float()
        self.steps = torch.zeros(members)
        self.active = torch.ones(members, dtype=torch.bool)

    def to(self, device) -> "StackedAdamW":
        for name in ("lr", "weight_decay", "steps", "active"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    @torch.no_grad()
    def step(self, closure=None):
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        active = self.active
        self.steps += active
        lr = torch.where(active, self.lr, 0.0)  # lr 0: weight decay and update vanish for a member not training
        decay = 1 - lr * self.weight_decay
        bias_correction1 = 1 - beta1**self.steps.clamp(min=1)
        bias_correction2_sqrt = (1 - beta2**self.steps.clamp(min=1)).sqrt()
        step_size = lr / bias_correction1
        # The moments' weights: AdamW's for a training member, 0 (no change) for one that is not.
        new1, keep2, new2 = (torch.where(active, v, w) for v, w in ((1 - beta1, 0.0), (beta2, 1.0), (1 - beta2, 0.0)))
        for param in group["params"]:
            if param.grad is None:
                continue
            shape = (-1,) + (1,) * (param.dim() - 1)  # [member, 1, ...]: broadcast over the weight's own dims
            state = self.state[param]
            if not state:
                state["exp_avg"] = torch.zeros_like(param)
                state["exp_avg_sq"] = torch.zeros_like(param)
            exp_avg, exp_avg_sq, grad = state["exp_avg"], state["exp_avg_sq"], param.grad
            param.mul_(decay.view(shape))
            exp_avg.lerp_(grad, new1.view(shape))
            exp_avg_sq.mul_(keep2.view(shape)).addcmul_(grad * new2.view(shape), grad)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt.view(shape)).add_(group["eps"])
            param.sub_(exp_avg / denom * step_size.view(shape))

    def member_state(self, k: int) -> dict[int, dict[str, Tensor]]:
        """Member k's moments and step as torch.optim.AdamW's state_dict()["state"] (index: parameter order)."""
        params = self.param_groups[0]["params"]
        return {
            i: {"step": self.steps[k].detach().cpu().clone(), "exp_avg": self.state[p]["exp_avg"][k].clone(),
                "exp_avg_sq": self.state[p]["exp_avg_sq"][k].clone()}
            for i, p in enumerate(params) if p in self.state
        }


# ---- the data: each member's batches from its own generator ---------------------------------------------------------


class StackedBatches:
    """data.Batches for every member, stacked: (inputs, targets, mask) [member, batch, ...], member k's drawn from
    its own generator, as its solo run draws them. Its state (in the checkpoint's loop state) is every member's
    generator state."""

    def __init__(self, members: list[TaskDataModule], steps: int):
        self.members, self.steps = members, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            batches = [m.task.sample(m.batch_size, m.generator) for m in self.members]
            yield tuple(torch.stack(parts) for parts in zip(*batches))

    def state_dict(self) -> dict:
        return {"generators": [m.generator.get_state() for m in self.members]}

    def load_state_dict(self, state: dict) -> None:
        for m, generator in zip(self.members, state["generators"]):
            m.generator.set_state(generator)


class StackedData(L.LightningDataModule):
    """The members' TaskDataModules as one: stacked training batches, and the validation set they share (it depends
    on the task and its sizes only, the same for every member of a group)."""

    def __init__(self, members: list[TaskDataModule]):
        super().__init__()
        self.members = members

    def setup(self, stage: str) -> None:
        first = self.members[0]
        first.setup(stage)
        for m in self.members[1:]:
            m.validation = first.validation  # one copy, not K

    @property
    def validation(self):
        return self.members[0].validation

    def train_dataloader(self) -> StackedBatches:
        return StackedBatches(self.members, self.trainer.max_steps)

    def val_dataloader(self) -> Chunks:
        return Chunks(self.validation, VALIDATION_BATCH)


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
    if loader := fit_state.get("combined_loader"):  # the stacked batches' state -> this member's generator, as
        fit_state["combined_loader"] = [{"generator": loader[0]["generators"][k]}]  # data.Batches saves it
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


# ---- the LightningModule -------------------------------------------------------------------------------------------


class StackedLM(L.LightningModule):
    """Trains a StackedModel; each member logs, validates, stops and saves as its solo run would, through the solo
    path's callbacks (called here once per member, with MemberTrainer and the member's view)."""

    def __init__(self, model: StackedModel, members: list[Member]):
        super().__init__()
        self.model = model
        self.members = members  # a plain list: the views' parameters are the stacked ones, not more parameters
        self.automatic_optimization = False
        self.val_sums: Tensor | None = None  # [member, 3]: loss, acc, seq_acc summed over validation examples
        self.val_count = 0

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

    def on_fit_start(self) -> None:
        # The views see this member's slices of the stacked weights, wherever Lightning moved them.
        for k, member in enumerate(self.members):
            member.view.to(self.device)
            stacked = dict(self.model.named_parameters())
            for name, param in member.view.model.named_parameters():
                param.data = stacked[name].data[k]
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
        inputs, targets, mask = batch  # [member, batch, pos]
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
        """A diverged member: frozen, its checkpoint of the last validation kept, the solo run's message."""
        k = self.members.index(member)
        self.optimizers(use_pl_optimizer=False).active[k] = False
        member.stopped_at = self.trainer.global_step
        member.outcome = train.diverged(error, member.run_dir)
        if images := member.callback(AttentionImages):
            images.close()

    # -- validation

    def on_validation_epoch_start(self) -> None:
        self.val_sums, self.val_count = None, 0

    def validation_step(self, batch, batch_idx: int) -> None:
        inputs, targets, mask = (t.expand(len(self.members), *t.shape) for t in batch)  # the same set for everyone
        sums = self.member_scores(self.model(inputs)[0], targets, mask, True) * len(batch[0])
        self.val_sums = sums if self.val_sums is None else self.val_sums + sums
        self.val_count += len(batch[0])

    def member_metrics(self, member: Member, values: list[float]) -> dict[str, float]:
        """A member's validation metrics, as its solo run's validation logs them: val/*, align/*, entropy/*."""
        metrics = {tags.metric("val", name): v for name, v in zip(tags.METRICS, values)}
        inputs = self.trainer.datamodule.validation[0]
        return {**metrics, **member.callback(AlignmentScalars).scalars(inputs, member.view.model)}

    def on_validation_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        fitting = self.trainer.state.fn == "fit"
        step = self.trainer.global_step
        means = (self.val_sums / self.val_count).tolist()
        optimizer = self.optimizers(use_pl_optimizer=False) if fitting else None
        for k, member in enumerate(self.members):
            if not member.active:
                continue
            metrics = self.member_metrics(member, means[k])
            if not fitting:  # the final scoring of the weights training ended with
                self.final[k] = metrics
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
                self.save(member, k)
                self.finish(member, metrics, step)
                continue
            self.save(member, k)
        if fitting and not any(m.active for m in self.members):
            self.trainer.should_stop = True

    def save(self, member: Member, k: int) -> None:
        """checkpoints/last.ckpt of a member, in the solo format, written atomically over the one before."""
        step = member.stopped_at if member.stopped_at is not None else self.trainer.global_step
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
        for k, member in enumerate(members):
            if member.active:
                module.save(member, k)  # the weights training ended with, as a solo run saves them after fit
        if stopper.stopped_at is not None:
            for member in members:
                if member.active:
                    member.logger.finalize("interrupted")
                    member.outcome = Interrupted(stopper.signum, trainer.global_step, trainer.global_step)
        elif any(m.active for m in members):
            module.final = {}
            trainer.validate(module, datamodule=data, verbose=False)
            for k, member in enumerate(members):
                if member.active:
                    module.finish(member, module.final[k], trainer.global_step)
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
