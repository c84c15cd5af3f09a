"""Sort: y = x in ascending order. The copying head at y_i attends to the positions of x holding the i-th
smallest token: where a value occurs several times, any of its copies will do (a head has no reason to prefer one),
so the target spreads evenly over all of them.

That head cannot be the first layer. With repeated values, whether y_i repeats y_{i-1} or moves on to the next
value depends on how many copies of y_{i-1} x holds and how many are already written, and a first-layer query holds
only its own token (y_{i-1}) and position: it cannot point at the answer before something has counted. So the
target is the last step of a two-layer circuit, given for layer 1 (layer 0, which does the counting, has several
ways to do it and no fixed target), as for selective copy.

Measured with the target at layer 0, as it was up to commit 659451a: pulled onto it there (python scripts/train.py
-m +experiment=sort loss.attention=10 trainer.stop_at=null trainer.max_steps=1500 'seed=range(4)'), a one-layer
head gets no nearer than alignment 0.67-0.70 and the task is no longer solved (val/seq_acc 0.70-0.94). Onto layer
1 of two (+experiment=sort_supervised) the head takes the pointer (0.98-0.99 in seeds 0-3) and solves it. Without
the pull two layers solve it too, but layer 1 stays soft (0.53-0.71: -m +experiment=sort model.layers=2
trainer.stop_at=null trainer.max_steps=1500 'seed=range(4)'). A one-layer model solves the task with attention
spread over the tokens that may come next (graded by value, some of it on the answers already written), a code its
readout decodes; it has no target here.
"""

import torch
from torch import Tensor

from attnlab.tasks.base import SequenceMap


class Sort(SequenceMap):
    name = "sort"

    def source(self, x: Tensor) -> Tensor:
        return torch.sort(x, dim=1, stable=True).indices  # one copy of each: what y is made from

    def target_attention(self, inputs: Tensor, layer: int) -> Tensor | None:
        if layer != 1:
            return None
        n = self.seq_len
        x = inputs[:, :n]
        y = x.gather(1, self.source(x))  # [batch, n]
        holds = (y.unsqueeze(2) == x.unsqueeze(1)).float()  # [batch, output i, input j]
        target = torch.zeros(inputs.shape[0], self.length, self.length)  # [batch, query, key]
        target[:, n - 1 :, :n] = holds / holds.sum(-1, keepdim=True)
        return target
