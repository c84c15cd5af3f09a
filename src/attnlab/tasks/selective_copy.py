"""Selective copy (Gu & Dao 2023, "Mamba"): a few data tokens scattered among noise, to be copied out in order.

    _ 3 _ _ 1 _ 4 _ | 3 1 4        (seq_len = 8 positions of which num_tokens = 3 hold data, the rest noise `_`)

Fed causally with next-token targets, minGPT-style like copy: position seq_len-1+i writes the i-th data token;
only those are scored. The model sees seq_len + num_tokens - 1 positions. Unlike copy, where the i-th data token
sits changes from example to example, so the copying head must find it by content, not by position.

The target is that copying head's pattern: output i attends to the position of the i-th data token. It is the
last step of a two-layer circuit (layer 0 works out how many data tokens precede each position, which can be done
several ways, so it has no fixed target), hence the target is given for layer 1.

How many data tokens there are decides whether training on the answers alone finds that pointer. With the data
config's 3, every output has a way round the count: the first data token is the earliest one, the last is the most
recent (which layer 0 copies by itself), the middle one is the data token before the last; trained so (two layers
with MLPs, dim 32, lr 3e-3: the recipe before), layer 1 stayed at alignment 0.57-0.82 over seeds 0-9, though its
readout works with the target (python scripts/ablate.py RUN_DIR: 0.99 with layer 1 given the target pattern, 0.05
with an even spread). The shortcuts show in the attention (python scripts/inspect_run.py RUN_DIR). With 6 data
tokens of 16 (+experiment=selective_copy, dim 64) the middle four have no such way round, and the pointer layer 1
learns for them serves all six: the target is the mechanism, and README's recipes table has the recipe's
alignment over seeds 0-9. Pulled onto the target (+experiment=selective_copy_supervised), layer 1 takes the pointer with 3
data tokens too.

In a variable-length run (data.min_len) the noise region has its own length n per example (from num_tokens up),
with the same num_tokens data tokens in it; a separator token `|` (above only a mark for the reader) says where it
ends, and pads `.` follow the answer:

    _ 3 _ 1 4 | 3 1 4 . . .         (n = 5 of seq_len = 8: position n+i writes the i-th data token)

so position n (the separator) and the data tokens after it are scored, and a longer region is only more noise.
"""

import torch
from torch import Tensor

from attnlab.config import ConfigError, integer
from attnlab.tasks.base import Batch, Task, pointers


class SelectiveCopy(Task):
    name = "selective_copy"
    causal = True

    def __init__(self, seq_len: int, vocab_size: int, num_tokens: int, min_len: int | None = None):
        super().__init__(seq_len, vocab_size)
        self.num_tokens = integer(num_tokens, "data.num_tokens")
        if self.num_tokens > self.seq_len:
            raise ConfigError(f"data.num_tokens must be <= data.seq_len = {self.seq_len}, got {self.num_tokens}")
        self.shortest = self.num_tokens  # a region holds its data tokens
        self.min_len = self.checked_min_len(min_len)

    # Token ids: data 0 .. vocab_size-1, then noise, then (variable length) the separator and the pad.
    @property
    def noise(self) -> int:
        return self.vocab_size

    @property
    def separator(self) -> int:
        return self.vocab_size + 1

    @property
    def pad(self) -> int:
        return self.vocab_size + 2

    def positions(self, n: int) -> int:
        return n + self.num_tokens if self.variable else n + self.num_tokens - 1

    @property
    def vocab(self) -> int:
        return self.vocab_size + (3 if self.variable else 1)

    def sample(self, n: int, generator: torch.Generator, length: int | None = None) -> Batch:
        k = self.num_tokens
        lengths, width = self.draw_lengths(n, generator, length)
        # Where the data tokens sit: k distinct positions of each example's own region, in order.
        draw = torch.rand(n, width, generator=generator)
        if self.variable:
            draw.masked_fill_(torch.arange(width) >= lengths, 2.0)  # positions past the region sort last
        where = draw.argsort(dim=1)[:, :k].sort(dim=1).values
        data = torch.randint(self.vocab_size, (n, k), generator=generator)
        region = torch.full((n, width), self.noise).scatter_(1, where, data)
        if not self.variable:  # every region `width` long: the region, then the data tokens
            stream = torch.cat([region, data], dim=1)
            mask = torch.zeros(n, width + k - 1, dtype=torch.bool)
            mask[:, width - 1 :] = True
            return stream[:, :-1], stream[:, 1:], mask
        p = torch.arange(width + 1 + k).expand(n, -1)  # stream positions: region, |, data, pads
        index = torch.where(p < lengths, p, p - lengths - 1)
        stream = torch.where(p < lengths, region.gather(1, index.clamp(0, width - 1)), self.pad)
        stream = torch.where(p == lengths, self.separator, stream)
        answer = (p > lengths) & (p <= lengths + k)
        stream = torch.where(answer, data.gather(1, index.clamp(0, k - 1)), stream)
        query = p[:, :-1]
        mask = (query >= lengths) & (query < lengths + k)  # the separator and the data tokens but the last
        return stream[:, :-1], stream[:, 1:], mask

    def target_attention(self, inputs: Tensor, layer: int) -> Tensor | None:
        if layer != 1:
            return None
        batch, width = inputs.shape
        k, gap = self.num_tokens, int(self.variable)
        if self.variable:
            n = (inputs == self.separator).long().argmax(dim=1, keepdim=True)  # [batch, 1]: the region's length
        else:
            n = torch.full((batch, 1), width - k + 1)
        is_data = (inputs != self.noise) & (torch.arange(width) < n)  # [batch, pos]
        # Positions of the data tokens in order: the data positions sorted before the rest, stably.
        where = (~is_data).float().argsort(dim=1, stable=True)[:, :k]
        queries = n + gap - 1 + torch.arange(k)  # [batch, k]
        return pointers(width, queries, where, torch.ones_like(where, dtype=torch.bool))

    def token_names(self) -> list[str]:
        return [str(i) for i in range(self.vocab_size)] + ["_"] + (["|", "."] if self.variable else [])
