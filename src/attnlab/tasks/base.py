"""What every toy task provides. A task owns its rules: how examples are made, which positions are scored, which
attention pattern solves it. Batches are whole tensors made from a seeded torch.Generator (no per-example loop)."""

import torch
from torch import Tensor

from attnlab.config import ConfigError, integer

# (inputs [batch, pos] long, targets [batch, pos] long, loss mask [batch, pos] bool)
Batch = tuple[Tensor, Tensor, Tensor]


class Task:
    """Subclasses set `name`, `causal`, and implement `sample`, `length` and `vocab`."""

    name: str
    causal: bool  # whether the model must not look ahead (next-token tasks)

    def __init__(self, seq_len: int, vocab_size: int):
        self.seq_len = integer(seq_len, "data.seq_len", minimum=2, maximum=1024)
        self.vocab_size = integer(vocab_size, "data.vocab_size", minimum=2, maximum=100_000)

    @property
    def length(self) -> int:
        """Positions the model sees."""
        raise NotImplementedError

    @property
    def vocab(self) -> int:
        """Token ids the model sees (data tokens plus any special tokens the task adds)."""
        return self.vocab_size

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        """n fresh training examples."""
        raise NotImplementedError

    def validation_set(self, n: int, generator: torch.Generator) -> Batch:
        """The held-out examples; tasks with a fixed example space (say modular addition) override this."""
        return self.sample(n, generator)

    @property
    def example_length(self) -> int:
        """How many tokens a user gives for one example of their own (scripts/inspect_run.py --input): by default
        the model's whole input."""
        return self.length

    def example(self, tokens: Tensor) -> Batch:
        """The example for a user's tokens [batch, example_length], as `sample` makes examples. By default the
        tokens are the model's input as is and the answer is unknown (mask all False); tasks that can work out the
        answer for any input override this (and may raise ConfigError for tokens they do not take)."""
        return tokens, torch.zeros_like(tokens), torch.zeros_like(tokens, dtype=torch.bool)

    def target_attention(self, inputs: Tensor, layer: int) -> Tensor | None:
        """The attention pattern known to solve the task at this layer, [batch, query, key], or None where no fixed
        pattern is known (for this layer, or for the task at all).

        A query row that has a target sums to 1 over the keys it should attend to (never a future key in a causal
        task); a row whose attention does not matter to the mechanism (say a reading-phase position) is all zero.
        Alignment (attnlab.alignment) averages over the rows with a target only."""
        return None

    def token_names(self) -> list[str]:
        """How each token id is shown in TensorBoard and the terminal."""
        return [str(i) for i in range(self.vocab)]

    def encode(self, text: str) -> Tensor:
        """Tokens by name, separated by spaces or commas ("3 1 4") -> their ids [pos]; a ConfigError names a word
        that is not a token of the task."""
        names = self.token_names()
        index = {name: i for i, name in enumerate(names)}
        words = text.replace(",", " ").split()
        if unknown := [word for word in words if word not in index]:
            shown = " ".join(names) if len(names) <= 20 else " ".join(names[:10] + ["…"] + names[-3:])  # a long vocabulary shortened
            raise ConfigError(f"{unknown[0]!r} is not a token of task {self.name} (tokens: {shown})")
        return torch.tensor([index[word] for word in words])

    def decode(self, tokens: Tensor) -> str:
        """Token ids [pos] -> their names, separated by spaces."""
        names = self.token_names()
        return " ".join(names[t] for t in torch.as_tensor(tokens).reshape(-1).tolist())


def pointers(length: int, queries: Tensor, keys: Tensor, valid: Tensor) -> Tensor:
    """A target pattern in which query queries[b, i] puts all its weight on key keys[b, i], for the i where
    valid[b, i]; every other row stays zero.  queries/keys/valid: [batch, i] -> [batch, query, key]"""
    batch = torch.arange(queries.shape[0]).unsqueeze(1).expand_as(queries)
    target = torch.zeros(queries.shape[0], length, length)
    return target.index_put_((batch, queries, keys), valid.float(), accumulate=True)


class SequenceMap(Task):
    """Read x, then write y = f(x) in the same stream (minGPT's sort-demo format).

    The stream is [x_0 .. x_{n-1}, y_0 .. y_{n-1}] fed causally with next-token targets; only the y part is scored.
    Position n-1+i predicts y_i, and y_i is always a copy of one input token, x[source[i]]: the ideal head at
    query n-1+i puts all its weight on key source[i].
    """

    causal = True

    def source(self, x: Tensor) -> Tensor:
        """[batch, n] index into x of the token that y_i copies."""
        raise NotImplementedError

    @property
    def length(self) -> int:
        return 2 * self.seq_len - 1

    @property
    def example_length(self) -> int:
        return self.seq_len  # a user gives x; y is worked out

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        return self.example(torch.randint(self.vocab_size, (n, self.seq_len), generator=generator))

    def example(self, x: Tensor) -> Batch:
        """x [batch, n] -> the stream [x, y] shifted into (inputs, next-token targets, mask on the y part)."""
        n = x.shape[0]
        y = x.gather(1, self.source(x))
        stream = torch.cat([x, y], dim=1)
        mask = torch.zeros(n, self.length, dtype=torch.bool)
        mask[:, self.seq_len - 1 :] = True
        return stream[:, :-1], stream[:, 1:], mask

    def target_attention(self, inputs: Tensor, layer: int) -> Tensor | None:
        """Queries n-1 .. 2n-2 (those that write y) on their source key; rows of the reading phase have no target
        and stay zero."""
        if layer != 0:
            return None
        n = self.seq_len
        target = torch.zeros(inputs.shape[0], self.length, self.length)  # [batch, query, key]
        target[:, n - 1 :].scatter_(2, self.source(inputs[:, :n]).unsqueeze(2), 1.0)
        return target
