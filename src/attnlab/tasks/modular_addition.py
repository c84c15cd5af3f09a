"""Modular addition (grokking: Power et al. 2022; Nanda et al. 2023): `a b =` -> (a + b) mod p.

The p² pairs are split once, by `split_seed`, into a training share `train_fraction` and the held-out rest:
training batches are drawn from the training pairs only, and validation is the held-out pairs (up to val_size of
them), so val/acc measures generalisation to sums never seen. Fed causally; only the `=` position is scored.

No fixed attention pattern solves it: the trained networks Nanda et al. reverse-engineered compute with Fourier
features of a and b, and how the `=` position splits its attention between a and b is not the mechanism. So
target_attention is None, and runs of this task log entropy but no alignment.
"""

from numbers import Real

import torch
from torch import Tensor

from attnlab.config import ConfigError, integer
from attnlab.tasks.base import Batch, Task


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


class ModularAddition(Task):
    name = "modular_addition"
    causal = True
    has_length = False  # a b = is always three tokens

    shortest = 2  # `a b`, the only length there is

    def __init__(self, p: int, train_fraction: float, split_seed: int, min_len: int | None = None):
        if min_len is not None:
            raise ConfigError(f"data.min_len must be null for modular_addition (every example is `a b =`: no length "
                              f"to vary), got {min_len!r}")
        self.min_len = None
        self.p = integer(p, "data.p", minimum=2, maximum=1000)
        if not is_prime(self.p):
            raise ConfigError(f"data.p must be a prime number, got {self.p}")
        if isinstance(train_fraction, bool) or not isinstance(train_fraction, Real) or not 0 < train_fraction < 1:
            raise ConfigError(f"data.train_fraction must be a number in (0, 1), got {train_fraction!r}")
        self.train_fraction = float(train_fraction)
        seed = integer(split_seed, "data.split_seed", minimum=0)
        # All pairs [p², 2] in a fixed random order: the first share trains, the rest is held out.
        a, b = torch.cartesian_prod(torch.arange(self.p), torch.arange(self.p)).unbind(1)
        order = torch.randperm(self.p**2, generator=torch.Generator().manual_seed(seed))
        cut = round(self.train_fraction * self.p**2)
        if not 0 < cut < self.p**2:
            raise ConfigError(f"data.train_fraction = {train_fraction} leaves no training or no held-out pair")
        pairs = torch.stack([a, b], dim=1)[order]
        self.train_pairs, self.held_out = pairs[:cut], pairs[cut:]
        self.seq_len, self.vocab_size = 2, self.p

    @property
    def equals(self) -> int:
        return self.p

    def positions(self, n: int) -> int:
        return n + 1

    @property
    def longest(self) -> int:
        return 2

    @property
    def vocab(self) -> int:
        return self.p + 1

    @property
    def example_length(self) -> int:
        return 2

    def example_positions(self, k: int) -> int:
        return self.positions(k)

    def sample(self, n: int, generator: torch.Generator, length: int | None = None) -> Batch:
        """n training pairs, drawn with replacement from the training share."""
        if length is not None:
            self.check_length(length, "length")
        return self.example(self.train_pairs[torch.randint(len(self.train_pairs), (n,), generator=generator)])

    def validation_set(self, n: int, generator: torch.Generator, length: int | None = None) -> Batch:
        """The held-out pairs (the first n of them, in the split's random order)."""
        if length is not None:
            self.check_length(length, "length")
        return self.example(self.held_out[:n])

    def example(self, pairs: Tensor) -> Batch:
        """pairs [batch, 2] -> ([a, b, =], (a + b) mod p at the `=` position, mask on that position)."""
        if (pairs >= self.p).any() or (pairs < 0).any():
            raise ConfigError(f"modular_addition: a and b must be in 0 .. {self.p - 1}")
        inputs = torch.cat([pairs, torch.full((len(pairs), 1), self.equals)], dim=1)
        targets = torch.zeros_like(inputs)
        targets[:, -1] = pairs.sum(dim=1) % self.p
        mask = torch.zeros_like(inputs, dtype=torch.bool)
        mask[:, -1] = True
        return inputs, targets, mask

    def token_names(self) -> list[str]:
        return [str(i) for i in range(self.p)] + ["="]
