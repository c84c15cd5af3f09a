"""The five ways a model can know where a token is (`model.positions`), and the step of attention each acts at.

    learned     a trained vector per position, added to the token's embedding     (step 1, attnlab.model)
    sinusoidal  Vaswani et al.'s fixed sin/cos vector per position, added there    (step 1)
    none        nothing: a causal model can still count (NoPE, Kazemnejad et al. 2023)
    rope        query and key turned by an angle that grows with position, so that their dot product depends
                on how far apart they are (Su et al. 2021, RoFormer)                 (step 2, attnlab.attention)
    alibi       a per-head penalty on the scores, linear in the distance from query to key (Press et al. 2022);
                symmetric (|query - key|) where the task is bidirectional            (step 3)

Learned and sinusoidal tables, and rope's angles, are made for the model's longest length (the longest of
data.seq_len and data.val_lengths): learned rows past data.seq_len never train, which is what a length study
measures.
"""

import math

import torch
from torch import Tensor, nn

SCHEMES = ("learned", "sinusoidal", "none", "rope", "alibi")
ADDED = ("learned", "sinusoidal")  # the schemes that add a vector to the embedding


def sinusoidal_positions(seq_len: int, dim: int) -> Tensor:
    """Vaswani et al.'s fixed encoding: sin/cos pairs at geometrically spaced frequencies.  [pos, dim]"""
    position = torch.arange(seq_len).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    table = torch.zeros(seq_len, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : dim // 2]
    return table


class Rotary(nn.Module):
    """Rotary position embedding, in its rotate-half form (GPT-NeoX, TransformerLens's default): the first and
    second half of each head's vector are the two coordinates of d_head/2 planes, each turned by position · θ_i,
    θ_i = 10000^(-2i/d_head). A head of odd size leaves its last coordinate as it is."""

    def __init__(self, d_head: int, length: int, base: float = 10000.0):
        super().__init__()
        half = d_head // 2
        frequency = base ** (-torch.arange(half) * 2 / d_head)  # [half]
        angle = torch.arange(length).unsqueeze(1) * frequency  # [pos, half]
        self.half = half
        self.register_buffer("cos", angle.cos(), persistent=False)
        self.register_buffer("sin", angle.sin(), persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        """t [..., pos, d_head] -> the same vectors turned by their position."""
        pos, half = t.shape[-2], self.half
        cos, sin = self.cos[:pos], self.sin[:pos]  # [pos, half]
        first, second, rest = t[..., :half], t[..., half : 2 * half], t[..., 2 * half :]
        return torch.cat((first * cos - second * sin, second * cos + first * sin, rest), dim=-1)


def alibi_slopes(heads: int) -> Tensor:
    """Press et al.'s slopes: a geometric sequence from 2^(-8/heads) down to 2^-8, one per head.  [head]"""
    return 2.0 ** (-8.0 * torch.arange(1, heads + 1) / heads)


class ALiBi(nn.Module):
    """The score bias -slope_h · distance(query, key), distance = query - key for a causal model (the future is
    masked anyway) and |query - key| for a bidirectional one."""

    def __init__(self, heads: int, length: int):
        super().__init__()
        position = torch.arange(length)
        distance = (position.unsqueeze(1) - position.unsqueeze(0)).abs()  # [query, key]
        self.register_buffer("bias", -alibi_slopes(heads).view(heads, 1, 1) * distance, persistent=False)

    def forward(self, pos: int) -> Tensor:
        """[head, query, key] for `pos` positions."""
        return self.bias[:, :pos, :pos]
