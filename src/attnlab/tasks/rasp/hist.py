"""RASP histogram (RASP-exps's `hist_N` and `hist_N_bos`): each token is answered with how often it occurs.

    [BOS] 3 1 4 1  ->  [·] #1 #2 #1 #2          rasp_hist_bos
          3 1 4 1  ->      #1 #2 #1 #2          rasp_hist

Counts go up to seq_len (a class each; RASP-exps caps them at 10 for its lengths to 100), so no example is longer.

With BOS (tech-srl/RASP, paper_examples.rasp `hist_bos`): one layer of one head, select(tokens, tokens, ==) with
BOS too; the weight left on BOS is 1/(count+1). Without BOS, rasplib.rasp's selector_width uses position 0 in
BOS's place, which takes two selectors in the same layer: one layer of two heads,

    sOR0  = select(tokens, tokens, ==) or select(indices, 0, ==)     # head 0: 1/(count + [x_0 != x_i]) on key 0
    sAND0 = select(tokens, tokens, ==) and select(indices, 0, ==)    # head 1: whether x_0 is the query's token
"""

import torch
from torch import Tensor

from attnlab.tasks.rasp.base import RaspTask, Selector, count_names, equal


class Hist(RaspTask):
    name = "rasp_hist"
    compiled = (1, 2)
    counts = True

    @property
    def classes(self) -> int:
        return self.seq_len  # counts 1 .. seq_len

    def class_names(self) -> list[str]:
        return count_names(self.seq_len)

    def outputs(self, x: Tensor, real: Tensor) -> Tensor:
        return equal(x, real).sum(-1) - 1

    def selectors(self, x: Tensor, real: Tensor, layer: int) -> list[Selector]:
        if layer != 0:
            return []
        same = equal(x, real)
        first = torch.arange(x.shape[1]) == 0  # [key]
        return [(same | first, False), (same & first, False)]


class HistBos(Hist):
    name = "rasp_hist_bos"
    compiled = (1, 1)
    bos = True

    def selectors(self, x: Tensor, real: Tensor, layer: int) -> list[Selector]:
        return [(equal(x, real), True)] if layer == 0 else []
