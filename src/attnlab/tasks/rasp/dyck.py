"""RASP Dyck-k PTF (RASP-exps's `dyck1_ptf` and `dyck2_ptf`): per prefix, P (pending: could still be balanced), T
(balanced) or F (can never be balanced again).

    ( a ( ) ) ) (   ->   P P P P T F F          rasp_dyck1: "()" and the neutral "a"
    ( { } ] (       ->   P P P F F              rasp_dyck2: "()", "{}" and "a"

Data as RASP-exps's dycki_ptf draws it, in turn: a balanced sequence (pairs and, 3 times in 10, the neutral, at
random places), a balanced sequence cut at a random place and filled with random tokens, and random tokens. Each is
exactly its drawn length (RASP-exps's balanced ones overshoot by one where a pair lands last; here a neutral makes
the parity). A balanced sequence is a uniform random Dyck word over its paren positions, by the cycle lemma: m + 1
opens and m closes shuffled, rotated to start after the last minimum of their running sum, first open dropped.

The programs (tech-srl/RASP, paper_examples.rasp): Dyck-1 in two layers of one head,

    layer 0: select(indices, indices, <=)   -> the share of opens and of closes so far: the balance
    layer 1: select(indices, indices, <=)   -> whether any prefix so far had a negative balance

and Dyck-2 in three layers of one head, as the program's comment gives it with `best` (the latest key of a
selector) in place of the depth_index layer that its four-layer, two-head form spends on it:

    layer 0: select(indices, indices, <=)   -> depth
    layer 1: the latest opener up to the query whose depth equals the query's depth + [query closes]:
             a closer's own opener
    layer 2: select(indices, indices, <=)   -> whether any prefix so far had a mismatch or a negative depth
"""

import torch
from torch import Tensor

from attnlab.config import ConfigError
from attnlab.tasks.rasp.base import RaspTask, Selector

P, T, F = 0, 1, 2


def prefix(width: int) -> Tensor:
    """[query, key]: the key is at or before the query (select(indices, indices, <=))."""
    i = torch.arange(width)
    return i.unsqueeze(1) >= i.unsqueeze(0)


class Dyck(RaspTask):
    pairs: int
    balanced_share = 0.7  # RASP-exps's DyckiGen inserts a pair 7 times in 10, the neutral otherwise

    def __init__(self, seq_len: int, vocab_size: int, min_len: int | None = None):
        if vocab_size != 2 * self.pairs + 1:
            raise ConfigError(f"data.vocab_size must be {2 * self.pairs + 1} for {self.name} ({self.pairs} pair(s) "
                              f"of parentheses and a neutral token), got {vocab_size!r}")
        super().__init__(seq_len, vocab_size, min_len)

    @property
    def neutral(self) -> int:
        return 2 * self.pairs  # opener of pair t: 2t, its closer: 2t + 1

    @property
    def classes(self) -> int:
        return 3

    def class_names(self) -> list[str]:
        return ["P", "T", "F"]

    def data_names(self) -> list[str]:
        return [c for pair in ["()", "{}"][: self.pairs] for c in pair] + ["a"]

    def openers(self, x: Tensor, real: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per position [batch, pos]: whether it opens, whether it closes, and the running depth after it."""
        paren = real & (x < self.neutral)
        opens, closes = paren & (x % 2 == 0), paren & (x % 2 == 1)
        return opens, closes, (opens.long() - closes.long()).cumsum(1)

    def best_opener(self, x: Tensor, real: Tensor) -> tuple[Tensor, Tensor]:
        """Per query [batch, query]: the latest opener up to it with depth after it equal to the query's depth +
        [query closes] (a closer's own opener, in a prefix that has not failed), and whether there is one."""
        opens, closes, depth = self.openers(x, real)
        level = depth + closes.long()  # RASP's delay_closer
        candidate = (opens.unsqueeze(1) & (level.unsqueeze(2) == level.unsqueeze(1)) & prefix(x.shape[1]))
        index = (candidate * torch.arange(1, x.shape[1] + 1)).argmax(-1)  # the latest candidate key
        return index, candidate.any(-1)

    def outputs(self, x: Tensor, real: Tensor) -> Tensor:
        _, closes, depth = self.openers(x, real)
        opener, found = self.best_opener(x, real)
        matched = found & (x.gather(1, opener) == x - 1)  # the opener of this closer's own pair
        bad = (depth < 0) | (closes & ~matched)
        failed = bad.long().cummax(1).values.bool()
        return torch.where(failed, F, torch.where(depth == 0, T, P))

    def selectors(self, x: Tensor, real: Tensor, layer: int) -> list[Selector]:
        batch, width = x.shape
        up_to_self = (prefix(width).expand(batch, -1, -1), False)
        if layer == 0 or layer == self.compiled[0] - 1:
            return [up_to_self]
        if layer == 1:  # Dyck-2's `best` opener
            opener, found = self.best_opener(x, real)
            pattern = torch.zeros(batch, width, width, dtype=torch.bool)
            pattern.scatter_(2, opener.unsqueeze(2), found.unsqueeze(2))
            return [(pattern, False)]
        return []

    def draw(self, lengths: Tensor, width: int, generator: torch.Generator) -> Tensor:
        """Balanced, balanced then random from a random cut, random: in turn over the batch."""
        batch = len(lengths)
        balanced = self.balanced(lengths, width, generator)
        cut = (torch.rand(batch, 1, generator=generator) * (lengths + 1)).long()  # in 0 .. length
        random = torch.randint(self.vocab_size, (batch, width), generator=generator)
        kind = (torch.arange(batch) % 3).unsqueeze(1)
        started = torch.where(torch.arange(width) < cut, balanced, random)
        return torch.where(kind == 0, balanced, torch.where(kind == 1, started, random))

    def balanced(self, lengths: Tensor, width: int, generator: torch.Generator) -> Tensor:
        """[batch, width]: a balanced sequence of each length [batch, 1]."""
        batch = len(lengths)
        real = torch.arange(width) < lengths
        neutral = (torch.rand(batch, width, generator=generator) >= self.balanced_share) & real
        paren = real & ~neutral
        odd = paren.sum(1, keepdim=True) % 2 == 1  # one more neutral: the first paren position
        neutral |= odd & paren & (paren.cumsum(1) == 1)
        paren = real & ~neutral
        m = paren.sum(1, keepdim=True) // 2
        # Cycle lemma: m + 1 steps up and m down in random order in slots 0 .. 2m; rotated to start at the last
        # minimum of the running sum, every partial sum is >= 1; without its first step it is a Dyck word.
        slot = torch.arange(width + 1)
        used = slot < 2 * m + 1  # [batch, slot]
        order = torch.rand(batch, width + 1, generator=generator).masked_fill(~used, 2.0)
        up = order.argsort(1).argsort(1) < m + 1
        step = torch.where(used, torch.where(up, 1, -1), 0)
        before = step.cumsum(1) - step  # running sum before each step
        lowest = before.masked_fill(~used, width + 2).min(1, keepdim=True).values
        start = torch.where(used & (before == lowest), slot, -1).max(1, keepdim=True).values
        word = step.gather(1, (start + 1 + torch.arange(width)) % (2 * m + 1))  # [batch, u]: +1 opens
        opens = word.gather(1, (paren.cumsum(1) - 1).clamp(min=0)) > 0  # the u-th paren position gets word[u]
        kinds = torch.randint(self.pairs, (batch, width), generator=generator)
        x = torch.where(paren, 2 * kinds + (~opens).long(), self.neutral)
        if self.pairs > 1:  # each closer takes its opener's pair
            opener, _ = self.best_opener(x, real)
            x = torch.where(paren & ~opens, x.gather(1, opener) + 1, x)
        return x


class Dyck1(Dyck):
    name = "rasp_dyck1"
    pairs = 1
    compiled = (2, 1)


class Dyck2(Dyck):
    name = "rasp_dyck2"
    pairs = 2
    compiled = (3, 1)
