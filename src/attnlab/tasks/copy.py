"""Copy: y = x. The head that solves it looks back exactly n-1 positions: a shifted diagonal."""

import torch
from torch import Tensor

from attnlab.tasks.base import SequenceMap


class Copy(SequenceMap):
    name = "copy"

    def source(self, x: Tensor) -> Tensor:
        return torch.arange(x.shape[1]).expand_as(x)
