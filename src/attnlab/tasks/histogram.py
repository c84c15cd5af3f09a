"""Histogram (RASP, Weiss et al. 2021): every token is answered with how often it occurs in the sequence.

    [BOS 3 1 4 1]  ->  [· #1 #2 #1 #2]

In a variable-length run (data.min_len) each sequence has its own length n, padded on the right:

    [BOS 3 1 3 _ _]  ->  [· #2 #1 #2 · ·]       (n = 3 of seq_len = 5)

No separator is needed: the model sees the whole sequence, and nothing attends to the pads, so the counts and the
target (over the sequence's own positions) are those of the n tokens alone. Counts only go up to seq_len (the
count tokens the vocabulary has), so examples longer than seq_len are not made.

The model sees the whole sequence at once (not causal): token i must count the equal tokens after it too. RASP's
`selector_width` solves it with one head: each token attends uniformly to the positions holding the same token and
to BOS, so the weight left on BOS is 1/(count+1) and the count can be read off the attention output. That is the
target pattern: row 1+i spread evenly over BOS and every position j with x_j = x_i (its own position included).

The recipe (+experiment=histogram) reaches it: 32 data tokens, two heads, no MLP; 9 of seeds 0-9 solved, all 10
aligned (align/best 0.91-0.98: python scripts/experiments.py --only histogram). What kept the recipe before (6
tokens, one head and an MLP) off it was the MLP. Split by the query's token (python scripts/ablate.py --by-token
RUN_DIR), its head used two mechanisms side by side. In the 6 solved seeds, for 2-5 of the 6 tokens it was a soft
selector: BOS and the same tokens, alignment 0.74-0.97 on their rows, and the exact selector on those rows only
kept val/seq_acc at 0.59-1.00. For the other 1-4 tokens it spread over the data with BOS all but left out
(alignment 0.20-0.55 there), and an even spread on those rows kept more of the accuracy than the selector did (in
12 of 13 such tokens): the count is read from the share of the output that is the token's own value, which, every
sequence holding seq_len data tokens, is c/seq_len and gives the count as well as BOS's 1/(c+1) does; even
attention offers it from the first step. Which tokens took which was settled in the first ~300 steps, and the MLP
was tuned to the mix: the selector on every row dropped val/seq_acc to 0.00-0.09. With 32 tokens counts are mostly
1-3 and the selector takes most tokens, but an MLP still leaves 10-25% of a count-1 row on other tokens
(align/best 0.70-0.91, seeds 0-2).

Without an MLP the readout is linear in the attention output, and a linear map cannot read the share: picking the
query token's own part out of an even spread's output is a product of the token and the output, where a linear
readout can only add them. Only the weight on BOS is left to count with, so the head must sit on the target's
cells. One head does (0.95-0.99 at 32 tokens) but reads one number per row, and its BOS weight stays squeezed near
1 (0.77-0.93 on count-1 rows, the target's 0.5): 0 of seeds 0-2 solved. Two heads with different BOS weights put
the counts on a curve that the linear readout cuts apart. Each head keeps its own BOS weight rather than 1/(c+1):
with either head replaced by the exact target (python scripts/ablate.py RUN_DIR) val/seq_acc falls to 0.00-0.71,
while both heads' own weights cut to the target's cells and renormalised keep it at 0.94-1.00 in the 9 solved
seeds (its "L0 all support" line). Attention supervision gets the selector itself at one head with an MLP and 6
tokens (+experiment=histogram_supervised: alignment 0.97, and it keeps its accuracy under the exact target).
"""

import torch
from torch import Tensor

from attnlab.tasks.base import Batch, Task


class Histogram(Task):
    name = "histogram"
    causal = False

    # Token ids: data 0 .. vocab_size-1, then BOS, then the counts 1 .. seq_len, then (variable length) the pad.
    @property
    def bos(self) -> int:
        return self.vocab_size

    @property
    def pad(self) -> int:
        return self.vocab_size + 1 + self.seq_len

    def positions(self, n: int) -> int:
        return n + 1

    @property
    def longest(self) -> int:
        return self.seq_len  # a longer sequence can hold a count that has no token

    @property
    def vocab(self) -> int:
        return self.vocab_size + 1 + self.seq_len + int(self.variable)

    @property
    def example_length(self) -> int:
        return self.seq_len  # a user gives x; BOS and the counts are worked out

    def example_positions(self, k: int) -> int:
        return self.positions(k)

    def sample(self, n: int, generator: torch.Generator, length: int | None = None) -> Batch:
        lengths, width = self.draw_lengths(n, generator, length)
        return self.stream(torch.randint(self.vocab_size, (n, width), generator=generator), lengths)

    def example(self, x: Tensor) -> Batch:
        """x [batch, k] -> ([BOS, x], count of each x_i as a token id, mask on every position but BOS)."""
        k = self.check_length(x.shape[1], "the example's length")
        return self.stream(x, torch.full((x.shape[0], 1), k))

    def stream(self, x: Tensor, lengths: Tensor) -> Batch:
        """x [batch, width] of which each example keeps its first `lengths` [batch, 1] -> [BOS, x, pads]."""
        batch, width = x.shape
        bos = torch.full((batch, 1), self.bos)
        same = x.unsqueeze(2) == x.unsqueeze(1)  # [batch, i, j]
        if not self.variable:  # every example `width` long
            mask = torch.ones(batch, width + 1, dtype=torch.bool)
            mask[:, 0] = False
            return torch.cat([bos, x], dim=1), torch.cat([torch.zeros_like(bos), self.bos + same.sum(-1)], dim=1), mask
        real = torch.arange(width) < lengths  # [batch, j]
        counts = (same & real.unsqueeze(1)).sum(-1)  # [batch, i], each in 1 .. length
        inputs = torch.cat([bos, torch.where(real, x, self.pad)], dim=1)
        targets = torch.cat([torch.zeros_like(bos), torch.where(real, self.bos + counts, 0)], dim=1)
        mask = torch.cat([torch.zeros_like(bos, dtype=torch.bool), real], dim=1)
        return inputs, targets, mask

    def target_attention(self, inputs: Tensor, layer: int) -> Tensor | None:
        if layer != 0:
            return None
        support = inputs.unsqueeze(2) == inputs.unsqueeze(1)  # [batch, query, key]: same token
        support[:, :, 0] = True  # every token also looks at BOS
        if self.variable:  # pads neither look (no target) nor are looked at
            real = inputs != self.pad  # [batch, pos]
            support &= real.unsqueeze(2) & real.unsqueeze(1)
        support[:, 0] = False  # BOS itself is not scored: no target
        return support.float() / support.sum(-1, keepdim=True).clamp(min=1)

    def token_names(self) -> list[str]:
        counts = [f"#{c}" for c in range(1, self.seq_len + 1)]
        return [str(i) for i in range(self.vocab_size)] + ["BOS"] + counts + (["_"] if self.variable else [])
