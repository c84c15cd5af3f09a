"""RASP double histogram (RASP-exps's `hist2_N_bos`): each token is answered with how many distinct tokens occur
as often as it does.

    [BOS] 3 1 4 1 4 5  ->  [·] #2 #2 #2 #2 #2 #2      (3 and 5 once, 1 and 4 twice: two tokens of each count)

The program (tech-srl/RASP, paper_examples.rasp `hist2_bos`; RASP-exps's hist2_main) compiles to two layers, two
heads in the first:

    layer 0 head 0: select(tokens, tokens, ==), BOS too              -> hist: the token's count
    layer 0 head 1: select(tokens, tokens, ==) and key before query, BOS too  -> has an earlier copy
    layer 1 head 0: key is a first occurrence with the query's count, BOS too  -> their number
"""

import torch
from torch import Tensor

from attnlab.tasks.rasp.base import RaspTask, Selector, count_names, earlier, equal


def counts_and_firsts(x: Tensor, real: Tensor) -> tuple[Tensor, Tensor]:
    """Per position [batch, pos]: its token's count, and whether it is that token's first occurrence."""
    same = equal(x, real)
    return same.sum(-1), ~(same & earlier(x.shape[1])).any(-1)


class DoubleHist(RaspTask):
    name = "rasp_double_hist"
    compiled = (2, 2)
    bos = True
    counts = True

    @property
    def classes(self) -> int:
        return self.seq_len

    def class_names(self) -> list[str]:
        return count_names(self.seq_len)

    def same_count_firsts(self, x: Tensor, real: Tensor) -> Tensor:
        """[batch, query, key]: the key is a first occurrence of a token with the query's count."""
        counts, first = counts_and_firsts(x, real)
        return (counts.unsqueeze(2) == counts.unsqueeze(1)) & (first & real).unsqueeze(1)

    def outputs(self, x: Tensor, real: Tensor) -> Tensor:
        return self.same_count_firsts(x, real).sum(-1) - 1

    def selectors(self, x: Tensor, real: Tensor, layer: int) -> list[Selector]:
        if layer == 0:
            same = equal(x, real)
            return [(same, True), (same & earlier(x.shape[1]), True)]
        if layer == 1:
            return [(self.same_count_firsts(x, real), True)]
        return []
