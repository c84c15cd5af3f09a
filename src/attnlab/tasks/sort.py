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

In a variable-length run each x has its own length n and a separator before y (base.SequenceMap's stream):

    3 1 3 | 1 3 3 _ _ _        (n = 3 of seq_len = 5: position 3+i writes the i-th smallest)

and the target is spread over the positions of x, within the example's own n, that hold y_i.
"""

import torch
from torch import Tensor

from attnlab.tasks.base import SequenceMap


class Sort(SequenceMap):
    name = "sort"

    def source(self, x: Tensor, lengths: Tensor) -> Tensor:
        # One copy of each: what y is made from. Positions at and after the length sort last.
        beyond = torch.arange(x.shape[1]) >= lengths  # [batch, width]
        return torch.sort(x.masked_fill(beyond, torch.iinfo(x.dtype).max), dim=1, stable=True).indices

    def target_attention(self, inputs: Tensor, layer: int) -> Tensor | None:
        if layer != 1:
            return None
        i, writes, n = self.answer_index(inputs)  # [batch, query]
        width = inputs.shape[1]
        y = inputs.gather(1, self.source(inputs, n))  # [batch, width], y_i for i < n
        holds = (y.unsqueeze(2) == inputs.unsqueeze(1)) & (torch.arange(width) < n).unsqueeze(1)  # [batch, i, key]
        holds = holds.float() / holds.sum(-1, keepdim=True).clamp(min=1)
        # [batch, query, key]: the query that writes y_i takes row i
        return holds.gather(1, i.unsqueeze(2).expand(-1, -1, width)) * writes.unsqueeze(2)
