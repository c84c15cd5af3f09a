"""Sort: y = x in ascending order. y_i attends to the positions of x holding the i-th smallest token: where a
value occurs several times, any of its copies will do (a head has no reason to prefer one), so the target
spreads evenly over all of them."""

import torch
from torch import Tensor

from attnlab.tasks.base import SequenceMap


class Sort(SequenceMap):
    name = "sort"

    def source(self, x: Tensor) -> Tensor:
        return torch.sort(x, dim=1, stable=True).indices  # one copy of each: what y is made from

    def target_attention(self, inputs: Tensor, layer: int) -> Tensor | None:
        if layer != 0:
            return None
        n = self.seq_len
        x = inputs[:, :n]
        y = x.gather(1, self.source(x))  # [batch, n]
        holds = (y.unsqueeze(2) == x.unsqueeze(1)).float()  # [batch, output i, input j]
        target = torch.zeros(inputs.shape[0], self.length, self.length)  # [batch, query, key]
        target[:, n - 1 :, :n] = holds / holds.sum(-1, keepdim=True)
        return target
