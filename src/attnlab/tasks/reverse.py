"""Reverse: y = x read backwards. The head that solves it is an anti-diagonal: y_i attends to x_{n-1-i}. In a
variable-length run n is the example's own length, so the anti-diagonal moves with it:

    3 1 4 | 4 1 3 _ _ _        (n = 3 of seq_len = 5: position 3+i writes y_i from key 2-i)

and the head must know how long x is (RASP's reverse counts it: at one fixed length a head can skip counting), so
its pointer is a second layer's (SequenceMap.pointer_layer).
"""

import torch
from torch import Tensor

from attnlab.tasks.base import SequenceMap


class Reverse(SequenceMap):
    name = "reverse"

    def source(self, x: Tensor, lengths: Tensor) -> Tensor:
        return (lengths - 1 - torch.arange(x.shape[1])).clamp(min=0).expand_as(x)
