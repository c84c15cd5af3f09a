"""Induction heads (Olsson et al. 2022): a random sequence followed by its repeat; predict each next token of the
repeat from the first occurrence.

    4 9 2 7 | 4 9 2 7 | _ _ _ _       (seq_len = 6: m = 4 distinct tokens, repeated, then pad `_`)

The first copy has m distinct tokens, m drawn per example from 2 .. seq_len, so the repeat starts at a different
position in every example: no fixed positional offset solves it, the model has to find the earlier occurrence by
content. Fed causally with next-token targets; scored on the repeat from its second token on (its first token
cannot be known). The model sees 2·seq_len - 1 positions.

Two layers solve it: a previous-token head in layer 0 (each key position 1 .. m-1 of the first copy takes in the
token before it), then an induction head in layer 1 (the query holding x_i attends to the position after the
earlier x_i, which holds x_{i+1}). Those are the targets per layer, on the rows the circuit uses.

In a variable-length run (data.min_len) the copy's length m is the example's length, uniform in
[min_len, seq_len], and the pads after the repeat are padding, which the model never attends to (in a
fixed-length run they are tokens like any other):

    4 9 2 4 9 2 _ _ _ _ _         (m = 3 of seq_len = 6; at its own length, 2m-1 positions: 4 9 2 4 9)

No separator is needed: the repeat starts where the first token comes back. In a fixed-length run an example at
data length k (validation_set(length=k)) is one of the fixed-length task at seq_len = k: m from 2 to k, pads as
tokens.
"""

import torch
from torch import Tensor

from attnlab.config import ConfigError
from attnlab.tasks.base import Batch, Task, pointers


class Induction(Task):
    name = "induction"
    causal = True
    shortest = 2  # a copy of one token has nothing to predict

    def __init__(self, seq_len: int, vocab_size: int, min_len: int | None = None):
        super().__init__(seq_len, vocab_size, min_len)
        if self.vocab_size < self.seq_len:
            raise ConfigError(
                f"data.vocab_size must be >= data.seq_len = {self.seq_len} (the tokens of the first copy are "
                f"distinct, so that the earlier occurrence is unique), got {self.vocab_size}"
            )

    @property
    def pad(self) -> int:
        return self.vocab_size

    def positions(self, n: int) -> int:
        return 2 * n - 1

    @property
    def longest(self) -> int:
        return min(self.vocab_size, super().longest)  # the first copy's tokens are distinct

    @property
    def vocab(self) -> int:
        return self.vocab_size + 1

    def sample(self, n: int, generator: torch.Generator, length: int | None = None) -> Batch:
        width = self.seq_len if length is None else self.check_length(length, "length")
        x = torch.rand(n, self.vocab_size, generator=generator).argsort(dim=1)[:, :width]  # distinct
        if not self.variable:  # the copy's length m varies inside a fixed width, its pads part of the data
            m = torch.randint(2, width + 1, (n, 1), generator=generator)
        elif length is None:
            m = torch.randint(self.min_len, width + 1, (n, 1), generator=generator)
        else:
            m = torch.full((n, 1), width)
        position = torch.arange(2 * width).expand(n, -1)
        source = torch.where(position < m, position, position - m).clamp(max=width - 1)
        stream = torch.where(position < 2 * m, x.gather(1, source), self.pad)
        query = position[:, :-1]
        mask = (query >= m) & (query < 2 * m - 1)
        return stream[:, :-1], stream[:, 1:], mask

    def copy_length(self, inputs: Tensor) -> Tensor:
        """m per example [batch, 1]: the first token reappears at position m."""
        return (inputs[:, 1:] == inputs[:, :1]).float().argmax(dim=1, keepdim=True) + 1

    def target_attention(self, inputs: Tensor, layer: int) -> Tensor | None:
        m, width = self.copy_length(inputs), inputs.shape[1]
        query = torch.arange(width).expand(inputs.shape[0], -1)
        if layer == 0:  # previous token, at the first copy's positions 1 .. m-1
            return pointers(width, query, (query - 1).clamp(min=0), (query >= 1) & (query < m))
        if layer == 1:  # query m+i (token x_i) on key i+1 (token x_{i+1}), for the scored rows
            return pointers(width, query, (query - m + 1).clamp(min=0), (query >= m) & (query < 2 * m - 1))
        return None

    def token_names(self) -> list[str]:
        return [str(i) for i in range(self.vocab_size)] + ["_"]
