"""RASP reverse (RASP-exps's `reverse_N`, no BOS): y_i = x_{n-1-i}.

    [3 1 4 1 5]  ->  [5 1 4 1 3]

The program (tech-srl/RASP, paper_examples.rasp and rasplib.rasp) takes two layers of one head:

    length = round(1 / aggregate(select(1, 1, ==), indicator(indices == 0)))    # layer 0: every key, evenly
    reverse = aggregate(select(indices, length - 1 - indices, ==), tokens)      # layer 1: the mirrored key

The second selector needs `length`, which no first-layer query knows: the paper's claim is that one layer does not
suffice.
"""

import torch
from torch import Tensor

from attnlab.tasks.rasp.base import RaspTask, Selector


class Reverse(RaspTask):
    name = "rasp_reverse"
    compiled = (2, 1)

    @property
    def classes(self) -> int:
        return self.vocab_size

    def class_names(self) -> list[str]:
        return self.data_names()

    def outputs(self, x: Tensor, real: Tensor) -> Tensor:
        n = real.sum(1, keepdim=True)
        return x.gather(1, (n - 1 - torch.arange(x.shape[1])).clamp(min=0))

    def selectors(self, x: Tensor, real: Tensor, layer: int) -> list[Selector]:
        batch, width = x.shape
        if layer == 0:  # full_s: every key, for the length
            return [(torch.ones(batch, width, width, dtype=torch.bool), False)]
        if layer == 1:  # flip_s: the key at length - 1 - query
            n = real.sum(1).view(-1, 1, 1)
            i = torch.arange(width)
            return [(i.view(1, 1, -1) == n - 1 - i.view(1, -1, 1), False)]
        return []
