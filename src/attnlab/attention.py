"""Self-attention, step by step as in the seed article.

1. Embedding    - done by the model: every token is already a vector of size `dim` when it reaches this layer.
2. Query/key/value - three learned projections: what a token looks for, what it offers, what it passes on.
3. Scores       - dot products of queries with keys, scaled by sqrt(d_head) so that softmax does not saturate.
4. Softmax      - each query's scores become weights over the keys that sum to 1.
5. Weighted sum - each token's output is the weight-averaged values, then mixed across heads by W_O.

The projections are stored the article's way round (`query = x @ W_Q`, W_Q of shape [dim, dim]) so that the
article's example can be fed in unchanged and the logged weight images read as the article writes them.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.hooks import HookPoint


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, causal: bool):
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.heads ({heads}) must divide model.dim ({dim})")
        self.dim, self.heads, self.d_head, self.causal = dim, heads, dim // heads, causal
        # Same scale as nn.Linear's default init: uniform in +-1/sqrt(fan_in).
        bound = 1 / math.sqrt(dim)
        self.W_Q, self.W_K, self.W_V, self.W_O = (
            nn.Parameter(torch.empty(dim, dim).uniform_(-bound, bound)) for _ in range(4)
        )
        # Where a notebook reads or patches activations (attnlab.hooks): identities that cost nothing unhooked.
        self.hook_q, self.hook_k, self.hook_v, self.hook_z = (HookPoint(swap=(1, 2)) for _ in range(4))
        self.hook_attn_scores, self.hook_pattern = HookPoint(), HookPoint()

    def forward(self, x: Tensor, need_weights: bool = True) -> tuple[Tensor, Tensor | None]:
        """x: [batch, pos, dim] -> (output [batch, pos, dim], weights [batch, head, query, key] or None).

        With need_weights=False the fused kernel computes the same thing without materialising the weights;
        training steps use it, logging and inspection ask for the weights.
        """
        # Step 2: query, key and value, split into heads.  [batch, head, pos, d_head]
        query = self._split_heads(x @ self.W_Q)
        key = self._split_heads(x @ self.W_K)
        value = self._split_heads(x @ self.W_V)
        query, key, value = self.hook_q(query), self.hook_k(key), self.hook_v(value)

        if not need_weights:
            output = F.scaled_dot_product_attention(query, key, value, is_causal=self.causal)
            return self._merge_heads(output) @ self.W_O, None

        # Step 3: scaled dot-product scores.  [batch, head, query, key]
        scores = query @ key.transpose(-2, -1) / math.sqrt(self.d_head)
        if self.causal:
            # A query may not look at keys after it: -inf becomes weight 0 after softmax.
            n = scores.shape[-1]
            future = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        scores = self.hook_attn_scores(scores)

        # Step 4: softmax over keys turns each query's scores into weights that sum to 1.
        weights = self.hook_pattern(scores.softmax(dim=-1))

        # Step 5: weighted sum of values, then heads are concatenated and mixed by W_O.
        output = self.hook_z(weights @ value)  # [batch, head, query, d_head]
        return self._merge_heads(output) @ self.W_O, weights

    def _split_heads(self, t: Tensor) -> Tensor:
        batch, pos, _ = t.shape  # [batch, pos, dim] -> [batch, head, pos, d_head]
        return t.view(batch, pos, self.heads, self.d_head).transpose(1, 2)

    def _merge_heads(self, t: Tensor) -> Tensor:
        batch, _, pos, _ = t.shape  # [batch, head, pos, d_head] -> [batch, pos, dim]
        return t.transpose(1, 2).reshape(batch, pos, self.dim)
