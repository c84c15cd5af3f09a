"""Named points inside the model where a notebook can read or replace an activation, as TransformerLens names them.

A HookPoint is an identity module placed where an activation is made (`query = self.hook_q(query)`). With no hook
added it returns its input and does nothing else: one attribute test per point, no module-call machinery (it
overrides nn.Module.__call__), so training steps pay nothing measurable for the points. With hooks added (only
attnlab.inspection's run_with_cache and run_with_hooks add them, for one forward) each hook sees the activation in
TransformerLens's layout and may return a replacement.

Names: the model's module path with TransformerLens's spelling of the attention module (`blocks.0.attention.hook_q`
is `blocks.0.attn.hook_q`). TransformerLens's short forms work too: ("pattern", 0) is `blocks.0.attn.hook_pattern`.
"""

import difflib
from collections.abc import Callable

from torch import Tensor, nn

from attnlab.config import ConfigError

# A hook: fn(activation, hook) -> a replacement activation, or None to leave it as it is (TransformerLens's form).
Hook = Callable[[Tensor, "HookPoint"], Tensor | None]


class HookPoint(nn.Module):
    """Identity unless hooks are added. `swap`: two dimensions transposed for the hooks, so that they see
    TransformerLens's layout (q, k, v, z are [batch, pos, head, d_head] there, [batch, head, pos, d_head] here)."""

    def __init__(self, swap: tuple[int, int] | None = None):
        super().__init__()
        self.swap = swap
        self.name = ""  # set by named_hook_points: what hooks and error messages call it
        self.hooks: list[Hook] = []

    def __call__(self, x: Tensor) -> Tensor:
        if not self.hooks:  # training and plain inference: nothing else happens here
            return x
        if self.swap is not None:
            x = x.transpose(*self.swap)
        for hook in self.hooks:
            replaced = hook(x, self)
            if replaced is not None:
                if replaced.shape != x.shape:
                    raise ValueError(f"hook on {self.name} returned shape {list(replaced.shape)}, not {list(x.shape)}")
                x = replaced
        return x if self.swap is None else x.transpose(*self.swap)

    forward = __call__

    def extra_repr(self) -> str:
        return self.name


def tl_name(module_path: str) -> str:
    """attnlab's module path -> TransformerLens's hook name."""
    return module_path.replace(".attention.", ".attn.")


def named_hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """Every HookPoint of the model by its TransformerLens name, in the order the forward pass reaches them."""
    points = {tl_name(path): m for path, m in model.named_modules() if isinstance(m, HookPoint)}
    for name, point in points.items():
        point.name = name
    return points


# TransformerLens's short names (its utils.get_act_name): ("pattern", 0) -> blocks.0.attn.hook_pattern.
SHORT = {
    "embed": "hook_embed", "pos_embed": "hook_pos_embed",
    "resid_pre": "blocks.{}.hook_resid_pre", "resid_mid": "blocks.{}.hook_resid_mid",
    "resid_post": "blocks.{}.hook_resid_post", "attn_out": "blocks.{}.hook_attn_out", "mlp_out": "blocks.{}.hook_mlp_out",
    "q": "blocks.{}.attn.hook_q", "k": "blocks.{}.attn.hook_k", "v": "blocks.{}.attn.hook_v",
    "z": "blocks.{}.attn.hook_z", "attn_scores": "blocks.{}.attn.hook_attn_scores",
    "pattern": "blocks.{}.attn.hook_pattern", "attn": "blocks.{}.attn.hook_pattern",
}


def resolve(name, known) -> str:
    """A hook name as given (full, or TransformerLens's (short, layer) pair) -> the full name, or a ConfigError
    naming the nearest one that exists."""
    if isinstance(name, tuple) and len(name) == 2 and name[0] in SHORT and isinstance(name[1], int):
        name = SHORT[name[0]].format(name[1])
    elif isinstance(name, str) and name in SHORT and "{}" not in SHORT[name]:
        name = SHORT[name]
    if name in known:
        return name
    nearest = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0)
    hint = f" (nearest: {nearest[0]})" if nearest else ""
    raise ConfigError(f"hook {name!r} is not a hook point of this model{hint}; all of them: run.hook_names")


class ActivationCache(dict):
    """{hook name: activation}, detached. Indexed by full name or TransformerLens's short form (cache["pattern", 0]);
    a name that is not there is a ConfigError naming the nearest, not a bare KeyError."""

    def __getitem__(self, name) -> Tensor:
        return super().__getitem__(resolve(name, self.keys()))

    def __contains__(self, name) -> bool:
        try:
            resolve(name, self.keys())
        except ConfigError:
            return False
        return True
