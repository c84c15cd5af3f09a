"""Reverse: y = x read backwards. The head that solves it is an anti-diagonal: y_i attends to x_{n-1-i}."""

import torch
from torch import Tensor

from attnlab.tasks.base import SequenceMap


class Reverse(SequenceMap):
    name = "reverse"

    def source(self, x: Tensor) -> Tensor:
        return torch.arange(x.shape[1] - 1, -1, -1).expand_as(x)
