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
"""

import torch
from torch import Tensor

from attnlab.config import ConfigError
from attnlab.tasks.base import Batch, Task, pointers


class Induction(Task):
    name = "induction"
    causal = True

    def __init__(self, seq_len: int, vocab_size: int):
        super().__init__(seq_len, vocab_size)
        if self.vocab_size < self.seq_len:
            raise ConfigError(
                f"data.vocab_size must be >= data.seq_len = {self.seq_len} (the tokens of the first copy are "
                f"distinct, so that the earlier occurrence is unique), got {self.vocab_size}"
            )

    @property
    def pad(self) -> int:
        return self.vocab_size

    @property
    def length(self) -> int:
        return 2 * self.seq_len - 1

    @property
    def vocab(self) -> int:
        return self.vocab_size + 1

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        x = torch.rand(n, self.vocab_size, generator=generator).argsort(dim=1)[:, : self.seq_len]  # distinct
        m = torch.randint(2, self.seq_len + 1, (n, 1), generator=generator)  # length of the copy
        position = torch.arange(2 * self.seq_len).expand(n, -1)
        source = torch.where(position < m, position, position - m).clamp(max=self.seq_len - 1)
        stream = torch.where(position < 2 * m, x.gather(1, source), self.pad)
        query = position[:, :-1]
        mask = (query >= m) & (query < 2 * m - 1)
        return stream[:, :-1], stream[:, 1:], mask

    def copy_length(self, inputs: Tensor) -> Tensor:
        """m per example [batch, 1]: the first token reappears at position m."""
        return (inputs[:, 1:] == inputs[:, :1]).float().argmax(dim=1, keepdim=True) + 1

    def target_attention(self, inputs: Tensor, layer: int) -> Tensor | None:
        m = self.copy_length(inputs)
        query = torch.arange(self.length).expand(inputs.shape[0], -1)
        if layer == 0:  # previous token, at the first copy's positions 1 .. m-1
            return pointers(self.length, query, (query - 1).clamp(min=0), (query >= 1) & (query < m))
        if layer == 1:  # query m+i (token x_i) on key i+1 (token x_{i+1}), for the scored rows
            return pointers(self.length, query, (query - m + 1).clamp(min=0), (query >= m) & (query < 2 * m - 1))
        return None

    def token_names(self) -> list[str]:
        return [str(i) for i in range(self.vocab_size)] + ["_"]
