"""RASP most-frequent (RASP-exps's `sort_by_freq_N_bos`): the distinct tokens, most frequent first (ties: the
token that occurs first first), then the non-token `§` for the positions left.

    [BOS] 3 1 4 1 4 4  ->  [·] 4 1 3 § § §

The program (tech-srl/RASP, paper_examples.rasp `sort_by_most_freq`; RASP-exps's sort_by_freq_main) compiles to
three layers, two heads in the first:

    layer 0 head 0: select(tokens, tokens, ==), BOS too                      -> the token's count
    layer 0 head 1: select(tokens, tokens, ==) and key before query, BOS too  -> has an earlier copy
    layer 1 head 0: key comes earlier in the order (first occurrences by count, then by position), BOS too
    layer 2 head 0: the query at place i reads the key whose place is i, BOS too
"""

import torch
from torch import Tensor

from attnlab.tasks.rasp.base import RaspTask, Selector, earlier, equal
from attnlab.tasks.rasp.double_hist import counts_and_firsts


class MostFreq(RaspTask):
    name = "rasp_most_freq"
    compiled = (3, 2)
    bos = True

    @property
    def classes(self) -> int:
        return self.vocab_size + 1  # the tokens and the non-token

    def class_names(self) -> list[str]:
        return self.data_names() + ["§"]

    def comes_before(self, x: Tensor, real: Tensor) -> Tensor:
        """[batch, query, key]: the key comes before the query in the output order. Scores as RASP-exps's: the
        count for a first occurrence, the count less more than any count otherwise; ties by position."""
        counts, first = counts_and_firsts(x, real)
        score = torch.where(first, counts, counts - x.shape[1] - 1)
        q, k = score.unsqueeze(2), score.unsqueeze(1)
        return ((k > q) | ((k == q) & earlier(x.shape[1]))) & real.unsqueeze(1)

    def places(self, x: Tensor, real: Tensor) -> Tensor:
        """[batch, pos]: each position's place in the output order (pads: their own index, past every real one)."""
        return torch.where(real, self.comes_before(x, real).sum(-1), torch.arange(x.shape[1]))

    def outputs(self, x: Tensor, real: Tensor) -> Tensor:
        _, first = counts_and_firsts(x, real)
        places = self.places(x, real)
        source = torch.empty_like(places).scatter_(1, places, torch.arange(x.shape[1]).expand_as(places))
        return torch.where(first.gather(1, source), x.gather(1, source), self.vocab_size)

    def selectors(self, x: Tensor, real: Tensor, layer: int) -> list[Selector]:
        if layer == 0:
            same = equal(x, real)
            return [(same, True), (same & earlier(x.shape[1]), True)]
        if layer == 1:
            return [(self.comes_before(x, real), True)]
        if layer == 2:
            places = self.places(x, real)
            return [(places.unsqueeze(1) == torch.arange(x.shape[1]).view(1, -1, 1), True)]
        return []
