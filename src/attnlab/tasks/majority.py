"""Majority: the most frequent token of the sequence, written after an `=` token.

    3 1 1 4 1 =  ->  1

One head solves it: the `=` position attends uniformly to the n data positions, so its attention output is the
average of their values, i.e. the histogram of tokens (up to the value map), and the readout picks its largest
entry. Target: row n (the `=`) spread evenly over keys 0 .. n-1. Since that support is all of the data, the
alignment only says the answer looks at the data rather than at itself; the entropy scalar tells how uniform it is.
Examples are drawn so that the most frequent token is unique (ties are redrawn).
"""

import torch
from torch import Tensor

from attnlab.config import ConfigError
from attnlab.tasks.base import Batch, Task


def modes(x: Tensor, vocab_size: int) -> tuple[Tensor, Tensor]:
    """x [batch, n] -> (most frequent token [batch], whether it is the only one with that count [batch])."""
    counts = torch.zeros(x.shape[0], vocab_size, dtype=torch.long).scatter_add_(1, x, torch.ones_like(x))
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
    def length(self) -> int:
        return self.seq_len + 1

    @property
    def vocab(self) -> int:
        return self.vocab_size + 1

    @property
    def example_length(self) -> int:
        return self.seq_len

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        x = torch.randint(self.vocab_size, (n, self.seq_len), generator=generator)
        # Redraw the examples whose most frequent token is tied, all at once, until none is (each round keeps a
        # constant share: a few rounds).
        while not (unique := modes(x, self.vocab_size)[1]).all():
            tied = (~unique).nonzero().squeeze(1)
            x[tied] = torch.randint(self.vocab_size, (len(tied), self.seq_len), generator=generator)
        return self.example(x)

    def example(self, x: Tensor) -> Batch:
        """x [batch, n] -> ([x, =], the majority at the `=` position, mask on that position only)."""
        batch = x.shape[0]
        top, unique = modes(x, self.vocab_size)
        if not unique.all():
            raise ConfigError("majority: the most frequent token must be unique in every example")
        inputs = torch.cat([x, torch.full((batch, 1), self.equals)], dim=1)
        targets = torch.zeros_like(inputs)
        targets[:, -1] = top
        mask = torch.zeros_like(inputs, dtype=torch.bool)
        mask[:, -1] = True
        return inputs, targets, mask

    def target_attention(self, inputs: Tensor, layer: int) -> Tensor | None:
        if layer != 0:
            return None
        target = torch.zeros(inputs.shape[0], self.length, self.length)  # [batch, query, key]
        target[:, -1, :-1] = 1 / self.seq_len
        return target

    def token_names(self) -> list[str]:
        return [str(i) for i in range(self.vocab_size)] + ["="]
