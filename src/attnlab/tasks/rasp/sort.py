"""RASP sort (RASP-exps's `sort_N_bos`): y = the tokens in ascending order.

    [BOS] 3 1 4 1  ->  [·] 1 1 3 4

The program (tech-srl/RASP, paper_examples.rasp `sort_bos`; RASP-exps's sort_main) compiles to two layers of one
head:

    layer 0: select(key, key, <) or (select(key, key, ==) and select(indices, indices, <)), BOS too
             -> num_before, each token's place in the sorted order (selector_width with BOS)
    layer 1: select(num_before, indices - 1, ==): the query at place i reads the token whose num_before is i
"""

import torch
from torch import Tensor

from attnlab.tasks.rasp.base import RaspTask, Selector, earlier


def before(x: Tensor, real: Tensor) -> Tensor:
    """[batch, query, key]: the key sorts before the query (smaller, or equal and earlier)."""
    q, k = x.unsqueeze(2), x.unsqueeze(1)
    return ((k < q) | ((k == q) & earlier(x.shape[1]))) & real.unsqueeze(1)


class Sort(RaspTask):
    name = "rasp_sort"
    compiled = (2, 1)
    bos = True

    @property
    def classes(self) -> int:
        return self.vocab_size

    def class_names(self) -> list[str]:
        return self.data_names()

    def outputs(self, x: Tensor, real: Tensor) -> Tensor:
        return torch.where(real, x, self.vocab_size).sort(dim=1, stable=True).values.clamp(max=self.vocab_size - 1)

    def selectors(self, x: Tensor, real: Tensor, layer: int) -> list[Selector]:
        is_before = before(x, real)
        if layer == 0:
            return [(is_before, True)]
        if layer == 1:  # query i on the key with num_before == i
            place = is_before.sum(-1)  # [batch, key]
            return [(place.unsqueeze(1) == torch.arange(x.shape[1]).view(1, -1, 1), False)]
        return []
