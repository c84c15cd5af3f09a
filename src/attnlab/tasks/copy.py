"""Copy: y = x. The head that solves it looks back a fixed distance, n-1 positions, at one fixed length. In a
variable-length run the separator sits between x and y, and the query that writes y_i is n positions after x_i,
where n is the example's own length:

    3 1 4 | 3 1 4 _ _ _        (n = 3 of seq_len = 5: position 3+i writes y_i from key i)

so the distance is no longer fixed: a first layer has to find the separator before a second one can point
(SequenceMap.pointer_layer).
"""

import torch
from torch import Tensor

from attnlab.tasks.base import SequenceMap


class Copy(SequenceMap):
    name = "copy"

    def source(self, x: Tensor, lengths: Tensor) -> Tensor:
        return torch.arange(x.shape[1]).expand_as(x)
