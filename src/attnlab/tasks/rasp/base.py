"""What the RASP tasks share (Weiss, Goldberg and Yahav 2021, "Thinking Like Transformers"; its experiments' code is
the public repository tech-srl/RASP-exps, whose languages these are).

Every RASP task maps a sequence to one output per position, seen whole (bidirectional), optionally after a BOS
token, padded on the right when lengths vary (data.min_len, uniform in [min_len, seq_len] as RASP-exps draws them
in [shortlen, longlen]):

    [BOS] x_0 .. x_{n-1} _ _        ->     [·] y_0 .. y_{n-1} · ·        (only the y are scored)

Token ids: the data tokens 0 .. vocab_size-1, then the pad, then BOS (tasks that have one), then the output classes
(`classes`, named by `class_names`), so that the model's one readout covers them all.

Each task is also its RASP program's selectors, per (layer, head) of the program compiled to a transformer (the
paper's section 5; RASP-exps's `tgt_attns.add_head(layer, head, ...)`): `head_targets` gives them, row-normalised,
as the per-head target patterns that alignment, the Attention tab and loss.attention use. With a BOS token, as in
RASP-exps, BOS's own row looks at BOS only and every other row looks at BOS too where the program's selector does
(selector_width's trick: `look_at_bos_too`).
"""

import torch
from torch import Tensor

from attnlab.config import ConfigError
from attnlab.tasks.base import MAX_LENGTH, Batch, Task

# Selector: [batch, query, key] bool over the data positions (no BOS), and whether its rows look at BOS too.
Selector = tuple[Tensor, bool]


class RaspTask(Task):
    """Subclasses set `name`, `bos`, `compiled` and implement `classes`, `outputs` and `selectors`."""

    causal = False
    bos: bool = False  # whether the stream starts with a BOS token
    compiled: tuple[int, int]  # (layers, heads) of the RASP program compiled to a transformer
    counts: bool = False  # whether outputs are counts up to seq_len (then no example is longer than seq_len)

    @property
    def pad(self) -> int:
        return self.vocab_size

    @property
    def bos_token(self) -> int:
        return self.vocab_size + 1

    @property
    def output_base(self) -> int:
        """The id of output class 0."""
        return self.vocab_size + 1 + int(self.bos)

    @property
    def classes(self) -> int:
        raise NotImplementedError

    @property
    def vocab(self) -> int:
        return self.output_base + self.classes

    @property
    def longest(self) -> int:
        return self.seq_len if self.counts else MAX_LENGTH

    def positions(self, n: int) -> int:
        return n + int(self.bos)

    @property
    def example_length(self) -> int:
        return self.seq_len  # a user gives x; BOS and the outputs are worked out

    def example_positions(self, k: int) -> int:
        return self.positions(k)

    def draw(self, lengths: Tensor, width: int, generator: torch.Generator) -> Tensor:
        """The data [batch, width] for examples of `lengths` [batch, 1]: uniform tokens, as RASP-exps's
        randoms_generator draws them (anything past an example's length is replaced by the pad)."""
        return torch.randint(self.vocab_size, (len(lengths), width), generator=generator)

    def sample(self, n: int, generator: torch.Generator, length: int | None = None) -> Batch:
        lengths, width = self.draw_lengths(n, generator, length)
        return self.stream(self.draw(lengths, width, generator), lengths)

    def example(self, x: Tensor) -> Batch:
        """x [batch, k] -> the stream at length k (as `sample` makes it)."""
        k = self.check_length(x.shape[1], "the example's length")
        if not ((x >= 0) & (x < self.vocab_size)).all():
            raise ConfigError(f"the example's tokens must be data tokens 0 .. {self.vocab_size - 1}")
        return self.stream(x, torch.full((x.shape[0], 1), k))

    def outputs(self, x: Tensor, real: Tensor) -> Tensor:
        """x [batch, width] (pads past each example's length), real [batch, width] -> output class per position
        [batch, width] (any value where not real)."""
        raise NotImplementedError

    def selectors(self, x: Tensor, real: Tensor, layer: int) -> list[Selector]:
        """The program's selectors at `layer`, one per head (head 0 first), over the data positions; [] for a layer
        past the program's. Keys and queries that are not real are masked out by the caller."""
        raise NotImplementedError

    def stream(self, x: Tensor, lengths: Tensor) -> Batch:
        """x [batch, width] of which each example keeps its first `lengths` [batch, 1] -> ([BOS] x _, [·] y ·,
        mask on y)."""
        batch, width = x.shape
        real = torch.arange(width) < lengths  # [batch, pos]
        x = torch.where(real, x, self.pad)
        targets = torch.where(real, self.output_base + self.outputs(x, real), 0)
        if not self.bos:
            return x, targets, real
        column = torch.zeros(batch, 1, dtype=torch.long)
        return (torch.cat([column + self.bos_token, x], 1), torch.cat([column, targets], 1),
                torch.cat([column.bool(), real], 1))

    def head_targets(self, inputs: Tensor, layer: int) -> Tensor | None:
        """The program's selectors at `layer` as target patterns [batch, head, query, key] (as wide as `inputs`,
        each row normalised to sum 1; rows the selector leaves empty, and pads, are all zero), or None past the
        program's layers."""
        x = inputs[:, 1:] if self.bos else inputs
        real = x != self.pad
        selected = self.selectors(x, real, layer)
        if not selected:
            return None
        both = real.unsqueeze(2) & real.unsqueeze(1)  # [batch, query, key]
        patterns = []
        for selector, bos_too in selected:
            selector = selector & both
            if self.bos:
                batch, n = real.shape
                full = torch.zeros(batch, n + 1, n + 1, dtype=torch.bool)
                full[:, 1:, 1:] = selector
                full[:, 1:, 0] = real if bos_too else False
                full[:, 0, 0] = True  # BOS looks at itself (RASP-exps's bos row)
                selector = full
            patterns.append(selector.float() / selector.sum(-1, keepdim=True).clamp(min=1))
        return torch.stack(patterns, 1)

    def data_names(self) -> list[str]:
        return [str(i) for i in range(self.vocab_size)]

    def class_names(self) -> list[str]:
        raise NotImplementedError

    def token_names(self) -> list[str]:
        return self.data_names() + ["_"] + (["BOS"] if self.bos else []) + self.class_names()


def equal(x: Tensor, real: Tensor) -> Tensor:
    """[batch, query, key]: key holds the query's token (keys that are not real never match)."""
    return (x.unsqueeze(2) == x.unsqueeze(1)) & real.unsqueeze(1)


def earlier(width: int) -> Tensor:
    """[query, key]: key before the query."""
    i = torch.arange(width)
    return i.unsqueeze(1) > i.unsqueeze(0)


def count_names(seq_len: int) -> list[str]:
    return [f"#{c}" for c in range(1, seq_len + 1)]
