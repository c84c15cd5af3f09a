"""How close learned attention comes to the task's target pattern, per head, over the validation set.

alignment = the share of a head's attention mass that falls on target cells, averaged over the query rows that
have a target (TransformerLens's head detector with its "mul" exclusion, on a 0/1 pattern). A row's share is
sum_k A[q, k] · [T[q, k] > 0], so the target pattern itself scores 1, and uniform attention scores the uniform
baseline: the mean over target rows of (target cells / keys the row may attend to). Rows without a target (all
zero in the task's pattern) do not count: they are positions whose attention the mechanism does not use.

A task may give a layer one target per head (Task.head_targets: each step of a RASP program is its own head's
selector). Alignment is then a matrix [selector, head]: every head against every selector of its layer. Head h's
own alignment is the diagonal (align/layer{L}/head{H}, what supervision pulls on), each selector's best head is its
row's maximum (align/layer{L}/selector{S}: which head took it, in an unsupervised run, is the run's own).

Entropy is each head's mean attention entropy (nats) over all query rows: low for sharp heads, log(keys) for
uniform ones. Rows of padded positions (variable-length examples) count in neither: a task's target has no row
there, and entropy leaves them out. Beside them, each head's score as a previous-token, duplicate-token, induction,
first-token and self head (attnlab.heads), by the same share over the detectors' patterns.
"""

from dataclasses import dataclass, field

import torch
from torch import Tensor

from attnlab import heads, tags
from attnlab.tasks import Task

CHUNK = 256  # validation examples per forward: bounds the [chunk, head, query, key] weights held at once


def row_shares(attention: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """attention [batch, head, query, key], target [batch, query, key] -> (sum over target rows of the mass share
    per head [head], number of target rows)."""
    on_target = (target > 0).float().unsqueeze(1)  # [batch, 1, query, key]
    has_target = (target.sum(-1) > 0).float().unsqueeze(1)  # [batch, 1, query]
    share = (attention * on_target).sum(-1)  # [batch, head, query]
    return (share * has_target).sum(dim=(0, 2)), has_target.sum()


def selector_shares(attention: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """attention [batch, head, query, key], per-head targets [batch, selector, query, key] -> (sum over each
    selector's target rows of every head's mass share [selector, head], the selector's target rows [selector])."""
    on_target = (target > 0).float()  # zero on rows without a target, so those rows add nothing
    share = torch.einsum("bhqk,bsqk->sh", attention, on_target)
    return share, (target.sum(-1) > 0).float().sum(dim=(0, 2))


def alignment(attention: Tensor, target: Tensor) -> Tensor:
    """Mean share of attention mass on target cells: per head [head] against a layer's target [batch, query, key],
    or [selector, head] against per-head targets [batch, selector, query, key]. 1 is the target itself."""
    if target.dim() == 4:
        total, rows = selector_shares(attention, target)
        return total / rows.clamp(min=1).unsqueeze(1)
    total, rows = row_shares(attention, target)
    return total / rows.clamp(min=1)


def rasp_supervision_loss(attention: Tensor, target: Tensor, keep: Tensor | None = None) -> Tensor:
    """RASP-exps's supervision term (TransformerClassifierTrainer.attn_loss): per example, the mean squared error
    over its own [n, n] cells between one head's attention [batch, query, key] and the selector (target > 0) with
    each row normalised to sum 1, a row the selector leaves empty normalised to even weight over the example's
    keys (RASP-exps adds 1e-8 before normalising); the mean over the examples. keep [batch, pos]: False at pads."""
    if keep is None:
        keep = torch.ones(attention.shape[:2], dtype=torch.bool, device=attention.device)
    cells = keep.unsqueeze(2) & keep.unsqueeze(1)  # [batch, query, key]
    n = keep.sum(1).float().view(-1, 1, 1)  # [batch, 1, 1]
    selected = (target > 0) & cells
    mass = selected.sum(-1, keepdim=True)
    wanted = torch.where(mass > 0, selected / mass.clamp(min=1), cells / n)
    error = ((attention - wanted) ** 2 * cells).sum(dim=(1, 2)) / n.view(-1) ** 2
    return error.mean()


def supervision_loss(attention: Tensor, target: Tensor) -> Tensor:
    """Mean squared error between one head's attention [batch, query, key] and the target [batch, query, key], over
    the query rows that have a target (each normalised to sum to 1), averaged over their keys: 0 on the target
    itself. Rows without a target are free, as in alignment: the mechanism does not use them."""
    mass = target.sum(-1, keepdim=True)  # [batch, query, 1]
    has_target = (mass > 0).float()
    error = ((attention - target / mass.clamp(min=1e-12)) ** 2).mean(-1, keepdim=True)  # [batch, query, 1]
    return (error * has_target).sum() / has_target.sum().clamp(min=1)


def entropy(attention: Tensor, keep: Tensor | None = None) -> Tensor:
    """Mean attention entropy in nats per head [head], over all batch and query rows, or only the rows where
    keep [batch, query] is True (padded queries left out)."""
    plogp = torch.where(attention > 0, attention * attention.clamp(min=1e-30).log(), 0.0)
    per_row = -plogp.sum(-1)  # [batch, head, query]
    if keep is None:
        return per_row.mean(dim=(0, 2))
    rows = keep.unsqueeze(1).float()  # [batch, 1, query]
    return (per_row * rows).sum(dim=(0, 2)) / rows.sum().clamp(min=1)


@dataclass
class Report:
    """Per layer: alignment per head [head] against the layer's target, or [selector, head] against per-head
    targets (None where the task has no target at that layer), entropy [head], and the head detectors' scores
    {kind: [head]} (empty where they were not measured)."""

    align: list[Tensor | None]
    entropy: list[Tensor]
    kinds: list[dict[str, Tensor]] = field(default_factory=list)

    def best(self) -> float | None:
        """The weakest step of the mechanism: per step (a layer's target, or each selector of a layer with per-head
        targets) its best head, then the worst such step (1-step tasks have one; induction and MQAR need both their
        layers, a RASP program every selector). None without any target."""
        best = [a.max(-1).values.reshape(-1) for a in self.align if a is not None]
        steps = [v.item() for per_step in best for v in per_step if not v.isnan()]  # NaN: a selector without rows
        return min(steps) if steps else None

    def scalars(self, length: int | None = None) -> dict[str, float]:
        """Flat {tag: value}: align/layer{L}/head{H}, align/best, entropy/layer{L}/head{H}; for the validation set
        at one of data.val_lengths, align/len{N}/layer{L}/head{H} and align/len{N}/best only."""
        out = {}
        for layer, (align, ent) in enumerate(zip(self.align, self.entropy)):
            if align is not None and align.dim() == 2:  # per-head targets: each head's own, each selector's best
                for selector, row in enumerate(align):
                    out[tags.align_selector(layer, selector, length)] = row.max().item()
                    if selector < len(row):
                        out[tags.align(layer, selector, length)] = row[selector].item()
                align = None
            for head in range(len(ent)):
                if align is not None:
                    out[tags.align(layer, head, length)] = align[head].item()
                if length is None:
                    out[tags.entropy(layer, head)] = ent[head].item()
        for layer, per_kind in enumerate(self.kinds if length is None else ()):
            for kind, score in per_kind.items():
                for head, value in enumerate(score.tolist()):
                    if value == value:  # NaN: no validation row has the kind's pattern (say no repeated token)
                        out[tags.head_kind(layer, head, kind)] = value
        if (best := self.best()) is not None:
            out[tags.align_best(length)] = best
        return out


class Tally:
    """Alignment and entropy summed over the chunks of a set of inputs, then made a Report."""

    def __init__(self):
        self.sums, self.rows, self.entropies, self.queries = None, None, None, 0
        self.kind_sums, self.kind_rows = None, None  # per layer [head, kind], [kind] (attnlab.heads)

    def add(self, attention: list[Tensor], targets: list[Tensor | None], keep: Tensor | None = None,
            kinds: Tensor | None = None) -> None:
        """One chunk: per layer its weights [batch, head, query, key] and its target [batch, query, key] or None;
        keep [batch, query]: False at padded positions, whose rows no mean counts (None: every row counts); kinds:
        the head detectors' patterns [batch, kind, query, key] (heads.stacked), the same for every layer."""
        if self.sums is None:
            self.sums = [None if t is None else 0.0 for t in targets]
            self.rows, self.entropies = [0.0] * len(attention), [0.0] * len(attention)
            self.kind_sums, self.kind_rows = [0.0] * len(attention), [0.0] * len(attention)
        batch, _, queries, _ = attention[0].shape
        counted = queries * batch if keep is None else keep.sum().item()  # query rows that count, over the chunk
        for layer, (weights, target) in enumerate(zip(attention, targets)):
            self.entropies[layer] = self.entropies[layer] + entropy(weights, keep).cpu() * counted
            if target is not None and target.dim() == 4:  # per-head targets: [selector, head] and [selector]
                total, count = selector_shares(weights, target.to(weights.device))
                self.sums[layer], self.rows[layer] = self.sums[layer] + total.cpu(), self.rows[layer] + count.cpu()
            elif target is not None:
                total, count = row_shares(weights, target.to(weights.device))
                self.sums[layer], self.rows[layer] = self.sums[layer] + total.cpu(), self.rows[layer] + count.item()
            if kinds is not None:
                total, count = heads.shares(weights, kinds.to(weights.device))
                self.kind_sums[layer] = self.kind_sums[layer] + total.cpu()
                self.kind_rows[layer] = self.kind_rows[layer] + count.cpu()
        self.queries += counted

    def report(self) -> Report:
        align = []
        for total, n in zip(self.sums, self.rows):
            if isinstance(n, Tensor):  # per-head targets: a selector without rows in the set has no alignment
                align.append(torch.where(n.unsqueeze(1) > 0, total / n.clamp(min=1).unsqueeze(1), torch.nan))
            else:
                align.append(None if total is None or n == 0 else total / n)
        kinds = []
        for total, rows in zip(self.kind_sums, self.kind_rows):
            if torch.is_tensor(total):  # measured: [head, kind] over [kind] rows; NaN for a kind no row has
                score = torch.where(rows > 0, total / rows.clamp(min=1), float("nan"))
                kinds.append(dict(zip(heads.KINDS, score.unbind(1))))
        return Report(align, [e / max(self.queries, 1) for e in self.entropies], kinds)


@torch.no_grad()
def measure(model: torch.nn.Module, task: Task, inputs: Tensor, targets: list[Tensor | None] | None = None,
            kinds: list[Tensor] | None = None) -> Report:
    """One explicit-path forward over `inputs` [batch, pos] in chunks, scoring every head of every layer.
    `targets` (per chunk, then per layer: task.layer_targets) and `kinds` (per chunk: chunk_kinds) can be
    passed in to avoid recomputing them."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tally = Tally()
    for c, start in enumerate(range(0, len(inputs), CHUNK)):
        chunk = inputs[start : start + CHUNK]
        _, attention = model(chunk.to(device), need_weights=True)  # per layer [batch, head, query, key]
        if targets is not None:
            layer_targets = targets[c]
        else:
            layer_targets = [task.layer_targets(chunk, layer) for layer in range(len(attention))]
        keep = real_positions(task, chunk.to(device))
        patterns = kinds[c] if kinds is not None else heads.stacked(chunk.to(device), model.blocks[0].attention.causal, keep)
        tally.add(attention, layer_targets, keep, patterns.to(device))
    model.train(was_training)
    return tally.report()


def real_positions(task: Task, inputs: Tensor) -> Tensor | None:
    """[batch, pos]: False where the input is padding (the model's keep mask), or None where the task never pads."""
    padding = getattr(task, "padding", None)
    return None if padding is None else inputs != padding


def chunk_targets(task: Task, inputs: Tensor, layers: int) -> list[list[Tensor | None]]:
    """task.layer_targets for every chunk `measure` makes of `inputs`, every layer: computed once per run."""
    starts = range(0, len(inputs), CHUNK)
    return [[task.layer_targets(inputs[s : s + CHUNK], layer) for layer in range(layers)] for s in starts]


def chunk_kinds(task: Task, inputs: Tensor, causal: bool) -> list[Tensor]:
    """The head detectors' patterns (heads.stacked) for every chunk `measure` makes of `inputs`: once per run."""
    chunks = (inputs[s : s + CHUNK] for s in range(0, len(inputs), CHUNK))
    return [heads.stacked(chunk, causal, real_positions(task, chunk)) for chunk in chunks]
