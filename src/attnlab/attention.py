"""Self-attention, step by step as in the article this project grew from (README: "注意力机制").

1. Embedding    - done by the model: every token is already a vector of size `dim` when it reaches this layer.
2. Query/key/value - three learned projections: what a token looks for, what it offers, what it passes on.
                   With rotary positions (model.positions=rope) query and key are turned by their position here.
3. Scores       - dot products of queries with keys, scaled by sqrt(d_head) so that softmax does not saturate.
                   ALiBi (model.positions=alibi) adds its distance penalty here; future keys (causal tasks) and
                   padded keys (variable-length examples) are set to -inf, so that softmax gives them weight 0.
4. Softmax      - each query's scores become weights over the keys that sum to 1.
5. Weighted sum - each token's output is the weight-averaged values, then mixed across heads by W_O.

The projections are stored the article's way round (`query = x @ W_Q`, W_Q of shape [dim, dim]) so that the
article's example can be fed in unchanged and the logged weight images read as the article writes them.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.positions import ALiBi, Rotary


def allowed_keys(pos: int, causal: bool, keep: Tensor | None, device: torch.device) -> Tensor | None:
    """Which keys each query may attend to: [batch or 1, 1, query, key], True where allowed; None where all are.
    A causal model's queries may not see later keys; no query sees a padded key (keep [batch, key] False there).
    Padding is on the right and position 0 is always a token, so no row is left without a key."""
    allowed = torch.ones(pos, pos, dtype=torch.bool, device=device).tril() if causal else None
    if keep is not None:
        real = keep[:, None, None, :]  # [batch, 1, 1, key]
        allowed = real if allowed is None else allowed & real
    return allowed


def fused_attention(query: Tensor, key: Tensor, value: Tensor, causal: bool, keep: Tensor | None,
                    bias: Tensor | None) -> Tensor:
    """Steps 3-5 in one fused kernel (scaled_dot_product_attention), without materialising the weights: the same
    as the explicit steps. Where only the future is masked, is_causal picks the kernel's fastest path; padding and
    ALiBi's bias go in as the attention mask (boolean, or additive with -inf where a key is not allowed)."""
    if keep is None and bias is None:
        return F.scaled_dot_product_attention(query, key, value, is_causal=causal)
    mask = allowed_keys(query.shape[-2], causal, keep, query.device)
    if bias is not None:  # [head, query, key] -> additive, -inf on the keys not allowed
        mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, causal: bool, positions: str = "learned", length: int = 0):
        """positions: model.positions; `rope` and `alibi` act inside this layer, for up to `length` positions."""
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.heads ({heads}) must divide model.dim ({dim})")
        self.dim, self.heads, self.d_head, self.causal = dim, heads, dim // heads, causal
        # Same scale as nn.Linear's default init: uniform in +-1/sqrt(fan_in).
        bound = 1 / math.sqrt(dim)
        self.W_Q, self.W_K, self.W_V, self.W_O = (
            nn.Parameter(torch.empty(dim, dim).uniform_(-bound, bound)) for _ in range(4)
        )
        self.rotary = Rotary(self.d_head, length) if positions == "rope" else None
        self.alibi = ALiBi(heads, length) if positions == "alibi" else None

    def forward(self, x: Tensor, need_weights: bool = True, keep: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """x: [batch, pos, dim] -> (output [batch, pos, dim], weights [batch, head, query, key] or None).
        keep: [batch, pos], False at padded positions (variable-length examples), or None where there are none.

        With need_weights=False the fused kernel computes the same thing without materialising the weights;
        training steps use it, logging and inspection ask for the weights.
        """
        # Step 2: query, key and value, split into heads.  [batch, head, pos, d_head]
        query = self._split_heads(x @ self.W_Q)
        key = self._split_heads(x @ self.W_K)
        value = self._split_heads(x @ self.W_V)
        if self.rotary is not None:  # rope: a query and a key score by their content and their distance
            query, key = self.rotary(query), self.rotary(key)
        bias = self.alibi(x.shape[1]) if self.alibi is not None else None  # [head, query, key]

        if not need_weights:
            output = fused_attention(query, key, value, self.causal, keep, bias)
            return self._merge_heads(output) @ self.W_O, None

        # Step 3: scaled dot-product scores.  [batch, head, query, key]
        scores = query @ key.transpose(-2, -1) / math.sqrt(self.d_head)
        if bias is not None:
            scores = scores + bias  # ALiBi: the farther the key, the lower its score
        if (allowed := allowed_keys(scores.shape[-1], self.causal, keep, scores.device)) is not None:
            # Keys after the query (causal) and padded keys: -inf becomes weight 0 after softmax.
            scores = scores.masked_fill(~allowed, float("-inf"))

        # Step 4: softmax over keys turns each query's scores into weights that sum to 1.
        weights = scores.softmax(dim=-1)

        # Step 5: weighted sum of values, then heads are concatenated and mixed by W_O.
        output = weights @ value  # [batch, head, query, d_head]
        return self._merge_heads(output) @ self.W_O, weights

    def _split_heads(self, t: Tensor) -> Tensor:
        batch, pos, _ = t.shape  # [batch, pos, dim] -> [batch, head, pos, d_head]
        return t.view(batch, pos, self.heads, self.d_head).transpose(1, 2)

    def _merge_heads(self, t: Tensor) -> Tensor:
        batch, _, pos, _ = t.shape  # [batch, head, pos, d_head] -> [batch, pos, dim]
        return t.transpose(1, 2).reshape(batch, pos, self.dim)
