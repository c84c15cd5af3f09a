"""Sort: y = x in ascending order. y_i attends to the position holding the i-th smallest token (ties broken by
position, so the target is unique)."""

import torch
from torch import Tensor

from attnlab.tasks.base import SequenceMap


class Sort(SequenceMap):
    name = "sort"

    def source(self, x: Tensor) -> Tensor:
        return torch.sort(x, dim=1, stable=True).indices
