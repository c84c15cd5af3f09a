"""The stacked model: every weight of AttentionModel with a leading member dimension (the Stacked* modules)."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.attention import allowed_keys, fused_attention
from attnlab.model import AttentionModel, Block

# ---- the model: every weight with a leading member dimension -------------------------------------------------------


class StackedLinear(nn.Module):
    """nn.Linear for each member: weight [member, out, in], bias [member, out]; x [member, ..., in]."""

    def __init__(self, members: int, fan_in: int, fan_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(members, fan_out, fan_in))
        self.bias = nn.Parameter(torch.zeros(members, fan_out))

    def forward(self, x: Tensor) -> Tensor:
        members, *rest, fan_in = x.shape
        flat = x.reshape(members, -1, fan_in)  # [member, rows, in]
        out = torch.baddbmm(self.bias.unsqueeze(1), flat, self.weight.transpose(1, 2))  # [member, rows, out]
        return out.view(members, *rest, -1)


class StackedNorm(nn.Module):
    """nn.LayerNorm(dim) for each member: weight and bias [member, dim]; x [member, batch, pos, dim]."""

    def __init__(self, members: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, dim))
        self.bias = nn.Parameter(torch.zeros(members, dim))

    def forward(self, x: Tensor) -> Tensor:
        normed = F.layer_norm(x, x.shape[-1:])
        return normed * self.weight[:, None, None] + self.bias[:, None, None]


class StackedEmbedding(nn.Module):
    """nn.Embedding for each member: weight [member, vocab, dim]; tokens [member, batch, pos]."""

    def __init__(self, members: int, vocab: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(members, vocab, dim))
        # One lookup in the members' tables laid end to end: member k's token t is row k * vocab + t.
        self.register_buffer("offsets", torch.arange(members).view(members, 1, 1) * vocab, persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        members, vocab, dim = self.weight.shape
        return F.embedding(tokens + self.offsets, self.weight.view(members * vocab, dim))


class StackedAttention(nn.Module):
    """attention.SelfAttention for each member: W_Q, W_K, W_V, W_O [member, dim, dim], applied as x @ W. The members
    are folded into the batch dimension, so one scaled_dot_product_attention call covers them all (the fused path
    that training steps take); with need_weights, the article's steps 3-5 written out (for loss.attention).
    Rotary and ALiBi positions (no weights of their own) are the solo layer's modules, shared by every member."""

    def __init__(self, members: int, solo: nn.Module):
        super().__init__()
        dim, heads = solo.dim, solo.heads
        self.dim, self.heads, self.d_head, self.causal = dim, heads, dim // heads, solo.causal
        self.W_Q, self.W_K, self.W_V, self.W_O = (nn.Parameter(torch.zeros(members, dim, dim)) for _ in range(4))
        self.rotary, self.alibi = solo.rotary, solo.alibi

    def forward(self, x: Tensor, need_weights: bool = False, keep: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """x [member, batch, pos, dim], keep [member, batch, pos] or None -> (output [member, batch, pos, dim],
        weights [member, batch, head, query, key] or None)."""
        members, batch, pos, dim = x.shape
        flat = x.reshape(members, batch * pos, dim)
        # Query, key and value in one batched matmul (one kernel instead of three), split into heads.
        # [member, batch * pos, 3 * dim] -> 3 x [member * batch, head, pos, d_head]
        projected = torch.bmm(flat, torch.cat((self.W_Q, self.W_K, self.W_V), dim=2))
        query, key, value = (self._split_heads(t, batch) for t in projected.split(dim, dim=2))
        if self.rotary is not None:
            query, key = self.rotary(query), self.rotary(key)
        bias = self.alibi(pos) if self.alibi is not None else None  # [head, query, key]
        keep = None if keep is None else keep.reshape(members * batch, pos)
        weights = None
        if not need_weights:
            output = fused_attention(query, key, value, self.causal, keep, bias)
        else:
            scores = query @ key.transpose(-2, -1) / math.sqrt(self.d_head)  # [member * batch, head, query, key]
            if bias is not None:
                scores = scores + bias
            if (allowed := allowed_keys(pos, self.causal, keep, scores.device)) is not None:
                scores = scores.masked_fill(~allowed, float("-inf"))
            weights = scores.softmax(dim=-1)
            output = weights @ value
            weights = weights.view(members, batch, self.heads, pos, pos)
        merged = output.transpose(1, 2).reshape(members, batch * pos, dim)  # heads concatenated
        return torch.bmm(merged, self.W_O).view(members, batch, pos, dim), weights

    def _split_heads(self, t: Tensor, batch: int) -> Tensor:
        members, rows, _ = t.shape  # [member, batch * pos, dim] -> [member * batch, head, pos, d_head]
        return t.view(members * batch, rows // batch, self.heads, self.d_head).transpose(1, 2)


class StackedBlock(Block):
    """model.Block for each member, with the same submodule names (so member state_dicts map one to one) and the
    same forward: x + attention(norm(x)), then x + mlp(norm(x)), on [member, ...] tensors."""

    def __init__(self, members: int, solo: Block):
        nn.Module.__init__(self)  # not Block's: its submodules are the solo ones
        dim, mlp, norm = solo.attention.dim, solo.mlp is not None, isinstance(solo.norm1, nn.LayerNorm)
        self.attention = StackedAttention(members, solo.attention)
        self.norm1 = StackedNorm(members, dim) if norm else nn.Identity()
        self.norm2 = StackedNorm(members, dim) if norm and mlp else nn.Identity()
        self.mlp = None
        if mlp:
            self.mlp = nn.Sequential(StackedLinear(members, dim, 4 * dim), nn.GELU(), StackedLinear(members, 4 * dim, dim))
        self.add_hook_points(mlp)  # Block.forward passes through them (never hooked here: a notebook loads solo runs)


class StackedModel(nn.Module):
    """K AttentionModels of the same shapes as one: tokens [member, batch, pos] -> logits [member, batch, pos, vocab].

    Its state_dict has the solo model's keys, each tensor with a leading member dimension: member k's solo
    state_dict is {name: tensor[k]} (member_state), and load_member puts one back."""

    def __init__(self, solo_models: list[AttentionModel]):
        super().__init__()
        first, members = solo_models[0], len(solo_models)
        vocab, dim = first.embedding.weight.shape
        norm = isinstance(first.norm, nn.LayerNorm)
        self.padding = first.padding
        self.embedding = StackedEmbedding(members, vocab, dim)
        if isinstance(first.positions, nn.Parameter):  # learned: one table per member
            self.positions = nn.Parameter(torch.zeros(members, *first.positions.shape))
        else:  # sinusoidal or none: a fixed table, the same for every member
            self.register_buffer("positions", first.positions.clone(), persistent=False)
        self.blocks = nn.ModuleList(StackedBlock(members, block) for block in first.blocks)
        self.norm = StackedNorm(members, dim) if norm else nn.Identity()
        self.readout = StackedLinear(members, dim, vocab)
        if self.state_dict().keys() != first.state_dict().keys():
            raise ValueError("the stacked model's parameters do not mirror the solo model's")
        with torch.no_grad():
            for k, model in enumerate(solo_models):
                self.load_member(k, model.state_dict())

    def forward(self, tokens: Tensor, need_weights: bool = False) -> tuple[Tensor, list[Tensor]]:
        """tokens [member, batch, pos] -> (logits [member, batch, pos, vocab], per layer weights [member, batch,
        head, query, key] where need_weights)."""
        members, batch, pos = tokens.shape
        positions = self.positions[..., :pos, :]  # [member, pos, dim] learned, [pos, dim] fixed
        x = self.embedding(tokens) + (positions.unsqueeze(1) if positions.dim() == 3 else positions)
        keep = None if self.padding is None else tokens != self.padding  # [member, batch, pos]
        attention = []
        for block in self.blocks:
            x, weights = block(x, need_weights, keep)  # [member, batch, pos, dim]
            if need_weights:
                attention.append(weights)
        return self.readout(self.norm(x)), attention

    def member_state(self, k: int) -> dict[str, Tensor]:
        """Member k's weights as a solo AttentionModel state_dict (views of the stacked tensors)."""
        return {name: tensor[k] for name, tensor in self.state_dict().items()}

    @torch.no_grad()
    def load_member(self, k: int, state: dict[str, Tensor]) -> None:
        """A solo AttentionModel state_dict into member k."""
        for name, tensor in self.state_dict().items():
            tensor[k].copy_(state[name])

    @torch.no_grad()
    def keep(self, kept: Tensor) -> None:
        """Only the members `kept` (indices, in their new order) from now on: every weight becomes a new tensor of
        their slices. Views of the old tensors (a dropped member's solo view) still see the weights they had."""
        for module in self.modules():
            for name, param in module.named_parameters(recurse=False):
                module.register_parameter(name, nn.Parameter(param[kept].clone()))
            if isinstance(module, StackedEmbedding):
                module.offsets = module.offsets[: len(kept)]  # member k's rows start at k * vocab
