"""The model around the attention layer: token embedding + positions -> attention blocks -> vocabulary logits."""

import math

import torch
from torch import Tensor, nn

from attnlab.attention import SelfAttention
from attnlab.hooks import HookPoint

POSITIONS = ("learned", "sinusoidal", "none")


def sinusoidal_positions(seq_len: int, dim: int) -> Tensor:
    """Vaswani et al.'s fixed encoding: sin/cos pairs at geometrically spaced frequencies.  [pos, dim]"""
    position = torch.arange(seq_len).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    table = torch.zeros(seq_len, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : dim // 2]
    return table


class Block(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then x + mlp(norm(x)). Norm and MLP can be switched off
    to study attention alone (a single attention-only layer is the article's model)."""

    def __init__(self, dim: int, heads: int, causal: bool, mlp: bool, norm: bool):
        super().__init__()
        self.attention = SelfAttention(dim, heads, causal)
        self.norm1 = nn.LayerNorm(dim) if norm else nn.Identity()
        self.norm2 = nn.LayerNorm(dim) if norm and mlp else nn.Identity()
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)) if mlp else None
        self.add_hook_points(mlp)

    def add_hook_points(self, mlp: bool) -> None:
        """Named activations for notebooks (attnlab.hooks), each [batch, pos, dim]; identities when unhooked."""
        self.hook_resid_pre, self.hook_attn_out, self.hook_resid_mid, self.hook_resid_post = (HookPoint() for _ in range(4))
        self.hook_mlp_out = HookPoint() if mlp else None

    def forward(self, x: Tensor, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        x = self.hook_resid_pre(x)
        attended, weights = self.attention(self.norm1(x), need_weights)
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
    ):
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"model.positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
        # Step 1 of the article: every token becomes a vector of size `dim`; positions are added because
        # attention by itself is blind to order.
        self.embedding = nn.Embedding(vocab_size, dim)
        if positions == "learned":
            self.positions = nn.Parameter(torch.randn(seq_len, dim) * 0.02)
        else:
            table = sinusoidal_positions(seq_len, dim) if positions == "sinusoidal" else torch.zeros(seq_len, dim)
            self.register_buffer("positions", table, persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads, causal, mlp, norm) for _ in range(layers))
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()
        self.readout = nn.Linear(dim, vocab_size)
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()  # [batch, pos, dim] and [pos, dim]

    def forward(self, tokens: Tensor, need_weights: bool = False) -> tuple[Tensor, list[Tensor]]:
        """tokens: [batch, pos] -> (logits [batch, pos, vocab], per layer weights [batch, head, query, key])."""
        x = self.hook_embed(self.embedding(tokens)) + self.hook_pos_embed(self.positions[: tokens.shape[1]])  # [batch, pos, dim]
        attention = []
        for block in self.blocks:
            x, weights = block(x, need_weights)
            if need_weights:
                attention.append(weights)
        return self.readout(self.norm(x)), attention
