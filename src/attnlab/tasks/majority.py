"""Majority: the most frequent token of the sequence, written after an `=` token.

    3 1 1 4 1 =  ->  1

One head solves it: the `=` position attends uniformly to the n data positions, so its attention output is the
average of their values, i.e. the histogram of tokens (up to the value map), and the readout picks its largest
entry. Target: row n (the `=`) spread evenly over keys 0 .. n-1. Since that support is all of the data, the
alignment only says the answer looks at the data rather than at itself; the entropy scalar tells how uniform it is.
Examples are drawn so that the most frequent token is unique (ties are redrawn).

In a variable-length run (data.min_len) each sequence has its own length n, and the `=` follows it, then pads:

    3 1 1 = _ _  ->  1                 (n = 3 of seq_len = 5)

the `=` already tells the model where the sequence ends; the target is row n spread over keys 0 .. n-1.
"""

import torch
from torch import Tensor

from attnlab.config import ConfigError
from attnlab.tasks.base import Batch, Task


def modes(x: Tensor, vocab_size: int, real: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """x [batch, n] (counting only where `real` [batch, n], if given) -> (most frequent token [batch], whether it
    is the only one with that count [batch])."""
    weights = torch.ones_like(x) if real is None else real.long()
    counts = torch.zeros(x.shape[0], vocab_size, dtype=torch.long).scatter_add_(1, x, weights)
    top = counts.max(dim=1)
    unique = (counts == top.values.unsqueeze(1)).sum(dim=1) == 1
    return top.indices, unique


class Majority(Task):
    name = "majority"
    causal = True  # the answer is the last position, which sees the whole sequence anyway

    @property
    def equals(self) -> int:
        return self.vocab_size

    @property
    def pad(self) -> int:
        return self.vocab_size + 1

    def positions(self, n: int) -> int:
        return n + 1

    @property
    def vocab(self) -> int:
        return self.vocab_size + 1 + int(self.variable)

    @property
    def example_length(self) -> int:
        return self.seq_len

    def example_positions(self, k: int) -> int:
        return self.positions(k)

    def sample(self, n: int, generator: torch.Generator, length: int | None = None) -> Batch:
        lengths, width = self.draw_lengths(n, generator, length)
        real = torch.arange(width) < lengths  # [batch, pos]
        x = torch.randint(self.vocab_size, (n, width), generator=generator)
        # Redraw the examples whose most frequent token is tied, all at once (each keeping its length), until none
        # is (each round keeps a constant share: a few rounds).
        while not (unique := modes(x, self.vocab_size, real)[1]).all():
            tied = (~unique).nonzero().squeeze(1)
            x[tied] = torch.randint(self.vocab_size, (len(tied), width), generator=generator)
        return self.stream(x, lengths)

    def example(self, x: Tensor) -> Batch:
        """x [batch, k] -> ([x, =], the majority at the `=` position, mask on that position only)."""
        k = self.check_length(x.shape[1], "the example's length")
        return self.stream(x, torch.full((x.shape[0], 1), k))

    def stream(self, x: Tensor, lengths: Tensor) -> Batch:
        """x [batch, width] of which each example keeps its first `lengths` [batch, 1] -> [x, =, pads]."""
        batch, width = x.shape
        real = torch.arange(width) < lengths
        top, unique = modes(x, self.vocab_size, real)
        if not unique.all():
            raise ConfigError("majority: the most frequent token must be unique in every example")
        p = torch.arange(width + 1).expand(batch, -1)
        answer = p == lengths  # [batch, pos]: the `=`
        inputs = torch.cat([x, torch.full((batch, 1), self.equals)], dim=1)  # [batch, width + 1]
        inputs = torch.where(p < lengths, inputs, torch.where(answer, self.equals, self.pad))
        targets = torch.where(answer, top.unsqueeze(1), 0)
        return inputs, targets, answer

    def target_attention(self, inputs: Tensor, layer: int) -> Tensor | None:
        if layer != 0:
            return None
        n = (inputs == self.equals).long().argmax(dim=1, keepdim=True)  # [batch, 1]: the data length
        position = torch.arange(inputs.shape[1])
        # [batch, query, key]: the `=` row, evenly over the n data keys
        target = (position == n).unsqueeze(2) & (position < n).unsqueeze(1)
        return target.float() / n.unsqueeze(2)

    def token_names(self) -> list[str]:
        return [str(i) for i in range(self.vocab_size)] + ["="] + (["_"] if self.variable else [])
