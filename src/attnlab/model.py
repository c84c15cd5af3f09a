"""The model around the attention layer: token embedding + positions -> attention blocks -> vocabulary logits."""

import torch
from torch import Tensor, nn

from attnlab.attention import SelfAttention
from attnlab.hooks import HookPoint
from attnlab.positions import SCHEMES, sinusoidal_positions


class Block(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then x + mlp(norm(x)). Norm and MLP can be switched off
    to study attention alone (a single attention-only layer is the article's model)."""

    def __init__(self, dim: int, heads: int, causal: bool, mlp: bool, norm: bool, positions: str = "learned",
                 length: int = 0):
        super().__init__()
        self.attention = SelfAttention(dim, heads, causal, positions, length)
        self.norm1 = nn.LayerNorm(dim) if norm else nn.Identity()
        self.norm2 = nn.LayerNorm(dim) if norm and mlp else nn.Identity()
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)) if mlp else None
        self.add_hook_points(mlp)

    def add_hook_points(self, mlp: bool) -> None:
        """Named activations for notebooks (attnlab.hooks), each [batch, pos, dim]; identities when unhooked."""
        self.hook_resid_pre, self.hook_attn_out, self.hook_resid_mid, self.hook_resid_post = (HookPoint() for _ in range(4))
        self.hook_mlp_out = HookPoint() if mlp else None

    def forward(self, x: Tensor, need_weights: bool, keep: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        x = self.hook_resid_pre(x)
        attended, weights = self.attention(self.norm1(x), need_weights, keep)
        attended = self.hook_attn_out(attended)
        x = x + attended
        x = self.hook_resid_mid(x)
        if self.mlp is not None:
            x = x + self.hook_mlp_out(self.mlp(self.norm2(x)))
        x = self.hook_resid_post(x)
        return x, weights


class AttentionModel(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        dim: int,
        heads: int,
        layers: int,
        positions: str,
        causal: bool,
        mlp: bool,
        norm: bool,
        padding: int | None = None,
    ):
        """seq_len: the longest input the model takes (its positions); padding: the token id no query may attend to
        (variable-length examples are right-padded with it), None where examples are never padded."""
        super().__init__()
        if positions not in SCHEMES:
            raise ValueError(f"model.positions must be one of {', '.join(SCHEMES)}, got {positions!r}")
        # Step 1 of the article: every token becomes a vector of size `dim`; positions are added because
        # attention by itself is blind to order (rope and alibi tell it inside attention: attnlab.positions).
        self.embedding = nn.Embedding(vocab_size, dim)
        self.padding = padding
        if positions == "learned":
            self.positions = nn.Parameter(torch.randn(seq_len, dim) * 0.02)
        else:
            table = sinusoidal_positions(seq_len, dim) if positions == "sinusoidal" else torch.zeros(seq_len, dim)
            self.register_buffer("positions", table, persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads, causal, mlp, norm, positions, seq_len) for _ in range(layers))
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()
        self.readout = nn.Linear(dim, vocab_size)
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()  # [batch, pos, dim] and [pos, dim]

    def forward(self, tokens: Tensor, need_weights: bool = False) -> tuple[Tensor, list[Tensor]]:
        """tokens: [batch, pos] -> (logits [batch, pos, vocab], per layer weights [batch, head, query, key])."""
        x = self.hook_embed(self.embedding(tokens)) + self.hook_pos_embed(self.positions[: tokens.shape[1]])  # [batch, pos, dim]
        keep = None if self.padding is None else tokens != self.padding  # [batch, pos]: False where padded
        attention = []
        for block in self.blocks:
            x, weights = block(x, need_weights, keep)
            if need_weights:
                attention.append(weights)
        return self.readout(self.norm(x)), attention
