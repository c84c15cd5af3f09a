"""Heads named by what they do: each head's score as a previous-token, duplicate-token, induction, first-token and
self head, whatever the task.

A kind is a 0/1 detection pattern over [query, key], made from the tokens alone (no tokenizer, no task). A head's
score is TransformerLens's head-detector "mul" score, the share of its attention on the pattern's cells, with the
rows that have no pattern cell left out (as attnlab.alignment scores the task's target): so a perfect
previous-token head scores 1, where TransformerLens's score, averaged over every row, counts position 0 (which has
no previous token) as a miss. Causal models' patterns hold no future key: a row whose only duplicate lies ahead is
left out, not scored 0. Bidirectional models' patterns look both ways.

    kind        cell [q, k] is on the pattern where               rows left out
    previous    k = q - 1                                         q = 0
    duplicate   tokens[k] = tokens[q], k != q                     tokens seen once
    induction   tokens[k - 1] = tokens[q], k - 1 != q             no earlier occurrence (or none at all)
    first       k = 0 (the first token: a BOS or attention sink)  none
    self        k = q                                             none
"""

import torch
from torch import Tensor

from attnlab import tags

KINDS = tags.HEAD_KINDS  # the order of stacked()'s kinds


def patterns(tokens: Tensor, causal: bool, keep: Tensor | None = None) -> dict[str, Tensor]:
    """tokens [batch, pos] -> {kind: 0/1 pattern [batch, query, key] (float)}."""
    return dict(zip(KINDS, stacked(tokens, causal, keep).unbind(1)))


def stacked(tokens: Tensor, causal: bool, keep: Tensor | None = None) -> Tensor:
    """tokens [batch, pos] -> every kind's 0/1 pattern, [batch, kind, query, key] in the order of KINDS. keep
    [batch, pos]: False at padded positions (variable-length examples), which are neither a row nor a cell."""
    batch, n = tokens.shape
    q = torch.arange(n, device=tokens.device).unsqueeze(1)  # [query, 1]
    k = torch.arange(n, device=tokens.device).unsqueeze(0)  # [1, key]
    same = tokens.unsqueeze(2) == tokens.unsqueeze(1)  # [batch, query, key]: token q equals token k
    # the token before each key, against each query's token: [batch, query, key]; key 0 has none
    after_same = torch.zeros_like(same)
    after_same[:, :, 1:] = same[:, :, :-1]
    cells = torch.stack([
        (k == q - 1).expand(batch, n, n),  # previous
        same & (k != q),  # duplicate
        after_same & (k - 1 != q),  # induction
        (k == 0).expand(batch, n, n),  # first
        (k == q).expand(batch, n, n),  # self
    ], dim=1)  # [batch, kind, query, key]
    if causal:
        cells = cells & (k <= q)
    if keep is not None:
        cells = cells & keep[:, None, :, None] & keep[:, None, None, :]
    return cells.float()


def shares(attention: Tensor, patterns: Tensor) -> tuple[Tensor, Tensor]:
    """attention [batch, head, query, key], patterns [batch, kind, query, key] -> (the sum over rows with a cell of
    the share of attention on the cells [head, kind], the number of such rows [kind]). One product for every kind
    at once: this runs at every validation."""
    share = (attention.unsqueeze(2) * patterns.unsqueeze(1)).sum(-1)  # [batch, head, kind, query]
    has_cell = (patterns.sum(-1) > 0).float()  # [batch, kind, query]
    return (share * has_cell.unsqueeze(1)).sum(dim=(0, 3)), has_cell.sum(dim=(0, 2))


def scores(attention: Tensor, tokens: Tensor, causal: bool, keep: Tensor | None = None) -> dict[str, Tensor]:
    """attention [batch, head, query, key] on tokens [batch, pos] -> {kind: score per head [head]}: the mean share
    of attention on the kind's cells over the rows that have any (NaN for a kind no row has)."""
    total, rows = shares(attention, stacked(tokens, causal, keep))
    return {kind: total[:, i] / rows[i] if rows[i] > 0 else torch.full_like(total[:, i], float("nan"))
            for i, kind in enumerate(KINDS)}


def best(scores_of_head: dict[str, float]) -> tuple[str, float] | None:
    """The kind a head does most, and its score: (kind, score), None where no kind was scored."""
    scored = {kind: s for kind, s in scores_of_head.items() if s == s}  # NaN: no row had the pattern
    return max(scored.items(), key=lambda item: item[1]) if scored else None
