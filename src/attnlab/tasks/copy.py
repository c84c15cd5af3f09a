"""Copy: y = x. The head that solves it looks back a fixed distance: n-1 positions at fixed length, and in a
variable-length run n+1, where n is the example's own length (the separator sits between x and y):

    3 1 4 | 3 1 4 _ _ _        (n = 3 of seq_len = 5: position 3+i writes y_i from key i)

so a head must find x_i by where the separator is, not by a fixed offset.
"""

import torch
from torch import Tensor

from attnlab.tasks.base import SequenceMap


class Copy(SequenceMap):
    name = "copy"

    def source(self, x: Tensor, lengths: Tensor) -> Tensor:
        return torch.arange(x.shape[1]).expand_as(x)
