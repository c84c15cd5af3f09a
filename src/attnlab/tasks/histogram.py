"""Histogram (RASP, Weiss et al. 2021): every token is answered with how often it occurs in the sequence.

    [BOS 3 1 4 1]  ->  [· #1 #2 #1 #2]

The model sees the whole sequence at once (not causal): token i must count the equal tokens after it too. RASP's
`selector_width` solves it with one head: each token attends uniformly to the positions holding the same token and
to BOS, so the weight left on BOS is 1/(count+1) and the count can be read off the attention output. That is the
target pattern: row 1+i spread evenly over BOS and every position j with x_j = x_i (its own position included).

A head trained on the task alone learns a soft version of it: most of its weight on BOS and the same tokens, but
10-35% left on the other tokens and BOS weighted more than 1/(count+1) (alignment 0.5-0.8), and its MLP reads the
count from that mix. It does not compute with the exact selector: given the target pattern in place of its own
(python scripts/ablate.py RUN_DIR), the solved seeds of +experiment=histogram (as it was at commit 659451a,
without LayerNorm) fall from val/seq_acc 1.0 to 0.00-0.46. Pulled onto the target
(+experiment=histogram_supervised), the same one-layer model learns the selector and computes with it (under the
same ablation it stays at 1.0), so the target stays: it is a mechanism this size can learn and use, though not the
one training on the answers alone finds.
"""

import torch
from torch import Tensor

from attnlab.tasks.base import Batch, Task


class Histogram(Task):
    name = "histogram"
    causal = False

    # Token ids: data 0 .. vocab_size-1, then BOS, then the counts 1 .. seq_len.
    @property
    def bos(self) -> int:
        return self.vocab_size

    @property
    def length(self) -> int:
        return self.seq_len + 1

    @property
    def vocab(self) -> int:
        return self.vocab_size + 1 + self.seq_len

    @property
    def example_length(self) -> int:
        return self.seq_len  # a user gives x; BOS and the counts are worked out

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        return self.example(torch.randint(self.vocab_size, (n, self.seq_len), generator=generator))

    def example(self, x: Tensor) -> Batch:
        """x [batch, n] -> ([BOS, x], count of each x_i as a token id, mask on every position but BOS)."""
        batch = x.shape[0]
        same = x.unsqueeze(2) == x.unsqueeze(1)  # [batch, i, j]
        counts = same.sum(-1)  # [batch, n], each in 1 .. n
        bos = torch.full((batch, 1), self.bos)
        inputs = torch.cat([bos, x], dim=1)
        targets = torch.cat([torch.zeros_like(bos), self.bos + counts], dim=1)
        mask = torch.ones(batch, self.length, dtype=torch.bool)
        mask[:, 0] = False
        return inputs, targets, mask

    def target_attention(self, inputs: Tensor, layer: int) -> Tensor | None:
        if layer != 0:
            return None
        support = inputs.unsqueeze(2) == inputs.unsqueeze(1)  # [batch, query, key]: same token
        support[:, :, 0] = True  # every token also looks at BOS
        support[:, 0] = False  # BOS itself is not scored: no target
        return support.float() / support.sum(-1, keepdim=True).clamp(min=1)

    def token_names(self) -> list[str]:
        return [str(i) for i in range(self.vocab_size)] + ["BOS"] + [f"#{c}" for c in range(1, self.seq_len + 1)]
