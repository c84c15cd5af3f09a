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
"""

import torch
from torch import Tensor

from attnlab.config import ConfigError, integer
from attnlab.tasks.base import Batch, Task, pointers


class MQAR(Task):
    name = "mqar"
    causal = True

    def __init__(self, num_kv_pairs: int, seq_len: int, vocab_size: int):
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

    @property
    def keys(self) -> int:
        return self.vocab_size // 2  # key ids 0 .. keys-1, value ids keys .. vocab_size-1

    @property
    def pad(self) -> int:
        return self.vocab_size

    @property
    def length(self) -> int:
        return self.seq_len - 1

    @property
    def vocab(self) -> int:
        return self.vocab_size + 1

    def layout(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Random examples as (stream [batch, seq_len], query positions [batch, pairs], the context position of
        the value each query asks for [batch, pairs])."""
        pairs, slots = self.num_kv_pairs, (self.seq_len - 2 * self.num_kv_pairs) // 2
        keys = torch.rand(n, self.keys, generator=generator).argsort(dim=1)[:, :pairs]  # distinct keys
        values = torch.randint(self.keys, self.vocab_size, (n, pairs), generator=generator)
        order = torch.rand(n, pairs, generator=generator).argsort(dim=1)  # which pair each query asks for
        slot = torch.rand(n, slots, generator=generator).argsort(dim=1)[:, :pairs].sort(dim=1).values
        stream = torch.full((n, self.seq_len), self.pad)
        stream[:, 0 : 2 * pairs : 2], stream[:, 1 : 2 * pairs : 2] = keys, values
        query = 2 * pairs + 2 * slot  # [batch, pairs]
        stream.scatter_(1, query, keys.gather(1, order))
        stream.scatter_(1, query + 1, values.gather(1, order))
        return stream, query, 2 * order + 1

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        stream, query, _ = self.layout(n, generator)
        mask = torch.zeros(n, self.length, dtype=torch.bool).scatter_(1, query, True)
        return stream[:, :-1], stream[:, 1:], mask

    def target_attention(self, inputs: Tensor, layer: int) -> Tensor | None:
        batch, pairs = inputs.shape[0], self.num_kv_pairs
        if layer == 0:  # each context value on its key
            values = torch.arange(1, 2 * pairs, 2).expand(batch, pairs)
            return pointers(self.length, values, values - 1, torch.ones_like(values, dtype=torch.bool))
        if layer == 1:  # each query on the value after the same key in the context
            context = inputs[:, : 2 * pairs : 2]  # [batch, pairs] the keys
            is_query = torch.zeros_like(inputs, dtype=torch.bool)
            is_query[:, 2 * pairs :] = inputs[:, 2 * pairs :] < self.keys  # key tokens after the context
            match = inputs.unsqueeze(2) == context.unsqueeze(1)  # [batch, pos, pairs]
            value = 2 * match.float().argmax(dim=2) + 1  # [batch, pos] where the matching key's value sits
            positions = torch.arange(self.length).expand(batch, -1)
            return pointers(self.length, positions, value, is_query & match.any(dim=2))
        return None

    def token_names(self) -> list[str]:
        return [f"k{i}" for i in range(self.keys)] + [f"v{i}" for i in range(self.vocab_size - self.keys)] + ["_"]
