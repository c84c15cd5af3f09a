"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology"): key-value pairs, then queries of the keys,
each to be answered with its value.

    k3 v1 k0 v4 k2 v0 | _ _ k0 v4 _ _ k2 v0 k3 v1 _        (seq_len = 17, num_kv_pairs = 3)

The first 2·num_kv_pairs tokens are the pairs (distinct keys from the first half of the vocabulary, values from
the second half); the rest of the sequence holds each key once more, in random order at random even offsets with
its value after it, and pad tokens `_` between (Zoology's layout). Fed causally with next-token targets; only the
values after the queries are scored. The model sees seq_len - 1 positions.

Two layers solve it (an induction-like circuit): in layer 0 each value of the context attends to its key (the
previous token), so that it carries the key; in layer 1 each query attends to the value whose key matches it.
Those are the targets: layer 0, rows 2i+1 -> 2i for the context pairs; layer 1, query rows -> the matching value.

In a variable-length run (data.min_len) each stream has its own length n, from 4·num_kv_pairs up: the same pairs,
the queries among its own (n - 2·num_kv_pairs) // 2 slots, then pads `.` (not the filler `_`, which is data the
model reads):

    k3 v1 k0 v4 k2 v0 | k2 v0 _ _ k0 v4 k3 v1 . . . .      (n = 14 of seq_len = 18)

No separator is needed: the context is always the first 2·num_kv_pairs tokens. A longer stream spreads the
queries further from the pairs.
"""

import torch
from torch import Tensor

from attnlab.config import ConfigError, integer
from attnlab.tasks.base import Batch, Task, pointers


class MQAR(Task):
    name = "mqar"
    causal = True
    shortest = 4  # one pair, then its query and value

    def __init__(self, num_kv_pairs: int, seq_len: int, vocab_size: int, min_len: int | None = None):
        super().__init__(seq_len, vocab_size)
        self.num_kv_pairs = n = integer(num_kv_pairs, "data.num_kv_pairs")
        if 4 * n > self.seq_len:
            raise ConfigError(
                f"data.seq_len must be >= 4 * data.num_kv_pairs = {4 * n} (the pairs, then a query and its value "
                f"for each), got {self.seq_len}"
            )
        if self.vocab_size // 2 < n:
            raise ConfigError(
                f"data.vocab_size must be >= 2 * data.num_kv_pairs = {2 * n} (distinct keys from the first half of "
                f"the vocabulary, values from the second), got {self.vocab_size}"
            )
        self.shortest = 4 * n
        self.min_len = self.checked_min_len(min_len)

    # Token ids: keys, values, then the filler `_` between the queries, then (variable length) the pad.
    @property
    def keys(self) -> int:
        return self.vocab_size // 2  # key ids 0 .. keys-1, value ids keys .. vocab_size-1

    @property
    def filler(self) -> int:
        return self.vocab_size

    @property
    def pad(self) -> int:
        return self.vocab_size + 1

    def positions(self, n: int) -> int:
        return n - 1

    @property
    def vocab(self) -> int:
        return self.vocab_size + 1 + int(self.variable)

    def layout(self, n: int, generator: torch.Generator, length: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Random examples as (stream [batch, width], query positions [batch, pairs], the context position of
        the value each query asks for [batch, pairs]), each example of its own length (`Task.draw_lengths`)."""
        lengths, width = self.draw_lengths(n, generator, length)
        pairs, slots = self.num_kv_pairs, (width - 2 * self.num_kv_pairs) // 2
        keys = torch.rand(n, self.keys, generator=generator).argsort(dim=1)[:, :pairs]  # distinct keys
        values = torch.randint(self.keys, self.vocab_size, (n, pairs), generator=generator)
        order = torch.rand(n, pairs, generator=generator).argsort(dim=1)  # which pair each query asks for
        # The query slots, among each example's own (lengths - 2 pairs) // 2: those past them sort last.
        beyond = torch.arange(slots) >= (lengths - 2 * pairs) // 2  # [batch, slot]
        draw = torch.rand(n, slots, generator=generator).masked_fill(beyond, 2.0)
        slot = draw.argsort(dim=1)[:, :pairs].sort(dim=1).values
        stream = torch.full((n, width), self.filler)
        stream[:, 0 : 2 * pairs : 2], stream[:, 1 : 2 * pairs : 2] = keys, values
        query = 2 * pairs + 2 * slot  # [batch, pairs]
        stream.scatter_(1, query, keys.gather(1, order))
        stream.scatter_(1, query + 1, values.gather(1, order))
        if self.variable:
            stream.masked_fill_(torch.arange(width) >= lengths, self.pad)
        return stream, query, 2 * order + 1

    def sample(self, n: int, generator: torch.Generator, length: int | None = None) -> Batch:
        stream, query, _ = self.layout(n, generator, length)
        mask = torch.zeros(n, stream.shape[1] - 1, dtype=torch.bool).scatter_(1, query, True)
        return stream[:, :-1], stream[:, 1:], mask

    def target_attention(self, inputs: Tensor, layer: int) -> Tensor | None:
        (batch, width), pairs = inputs.shape, self.num_kv_pairs
        if layer == 0:  # each context value on its key
            values = torch.arange(1, 2 * pairs, 2).expand(batch, pairs)
            return pointers(width, values, values - 1, torch.ones_like(values, dtype=torch.bool))
        if layer == 1:  # each query on the value after the same key in the context
            context = inputs[:, : 2 * pairs : 2]  # [batch, pairs] the keys
            is_query = torch.zeros_like(inputs, dtype=torch.bool)
            is_query[:, 2 * pairs :] = inputs[:, 2 * pairs :] < self.keys  # key tokens after the context
            match = inputs.unsqueeze(2) == context.unsqueeze(1)  # [batch, pos, pairs]
            value = 2 * match.float().argmax(dim=2) + 1  # [batch, pos] where the matching key's value sits
            positions = torch.arange(width).expand(batch, -1)
            return pointers(width, positions, value, is_query & match.any(dim=2))
        return None

    def token_names(self) -> list[str]:
        keys = [f"k{i}" for i in range(self.keys)]
        values = [f"v{i}" for i in range(self.vocab_size - self.keys)]
        return keys + values + ["_"] + (["."] if self.variable else [])
