"""A run as TransformerLens's own model (run.to_transformer_lens()), for the tools the field already has: its
run_with_cache, activation patching, head detector, circuit analysis.

Needs the `tl` extra (pip install -e '.[tl]'). TransformerLens 4 builds small models of its own with
TransformerBridge.boot_native(config) and loads weights written in HookedTransformer's layout through
convert_tl_checkpoint; attnlab's weights are written in that layout here:

    attnlab                                   HookedTransformer layout
    embedding.weight [vocab, dim]             embed.W_E [vocab, d_model]
    positions [pos, dim]                      pos_embed.W_pos [n_ctx, d_model] (sinusoidal or none: the fixed table)
    attention.W_Q [dim, dim], x @ W_Q         attn.W_Q [head, d_model, d_head]: head h's columns h*d_head...
    attention.W_O [dim, dim]                  attn.W_O [head, d_head, d_model]: head h's rows
    (no biases in attention)                  attn.b_Q, b_K, b_V [head, d_head], b_O [d_model]: zeros
    norm1 / norm2 / norm (LayerNorm)          ln1 / ln2 / ln_final (.w, .b)
    mlp.0 / mlp.2 (Linear, GELU between)      mlp.W_in [d_model, d_mlp], mlp.W_out [d_mlp, d_model] (act_fn "gelu")
    readout (Linear with bias)                unembed.W_U [d_model, vocab], b_U
    padding (variable-length runs)            attention_mask = tokens != padding on every forward not given one
"""

import torch

from attnlab.config import ConfigError


def require():
    """TransformerLens's pieces, or a ConfigError saying how to install them."""
    try:
        from transformer_lens.config import TransformerBridgeConfig
        from transformer_lens.model_bridge import TransformerBridge
        from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint
    except ImportError as error:
        raise ConfigError(
            f"run.to_transformer_lens() needs TransformerLens: pip install -e '.[tl]' ({error})"
        ) from None
    return TransformerBridgeConfig, TransformerBridge, convert_tl_checkpoint


def tl_config(run):
    """The TransformerBridgeConfig of the run's model; what TransformerLens cannot express is refused."""
    TransformerBridgeConfig, _, _ = require()
    model = run.model
    m = run.cfg.model
    positions = m.get("positions", "learned")
    if positions not in ("learned", "sinusoidal", "none"):
        # alibi: TransformerLens's native models have no such bias. rope: they have rotary positions, but whether
        # their pairing of dimensions is attnlab.positions.Rotary's is not checked yet, so it is not claimed.
        raise ConfigError(f"model.positions={positions}: run.to_transformer_lens() takes learned, sinusoidal or none "
                          "positions (TransformerLens's W_pos)")
    attention = model.blocks[0].attention
    return TransformerBridgeConfig(
        d_model=attention.dim, d_head=attention.d_head, n_heads=attention.heads, n_layers=len(model.blocks),
        n_ctx=model.positions.shape[0], d_vocab=model.embedding.num_embeddings, d_mlp=4 * attention.dim,
        act_fn="gelu",  # nn.GELU(): the exact erf form, as TransformerLens's "gelu"
        attn_only=model.blocks[0].mlp is None,
        normalization_type="LN" if isinstance(model.norm, torch.nn.LayerNorm) else None,
        attention_dir="causal" if attention.causal else "bidirectional",
        positional_embedding_type="standard",  # every position table is a W_pos, learned or fixed
        default_prepend_bos=False,  # attnlab's tasks have no BOS of their own to add
        init_weights=False,  # overwritten by the run's weights at once
    )


def state_dict(model) -> dict[str, torch.Tensor]:
    """The model's weights in HookedTransformer's layout (the module docstring's table)."""
    d, heads = model.blocks[0].attention.d_head, model.blocks[0].attention.heads
    dim = d * heads
    out = {"embed.W_E": model.embedding.weight, "pos_embed.W_pos": model.positions}
    for layer, block in enumerate(model.blocks):
        a, p = block.attention, f"blocks.{layer}."
        for name in ("Q", "K", "V"):
            # [dim, dim] -> [head, d_model, d_head]: head h reads columns h*d ... (h+1)*d
            out[f"{p}attn.W_{name}"] = getattr(a, f"W_{name}").view(dim, heads, d).permute(1, 0, 2)
            out[f"{p}attn.b_{name}"] = torch.zeros(heads, d)
        out[f"{p}attn.W_O"] = a.W_O.view(heads, d, dim)  # rows h*d ... (h+1)*d read head h's output
        out[f"{p}attn.b_O"] = torch.zeros(dim)
        if isinstance(block.norm1, torch.nn.LayerNorm):
            out[f"{p}ln1.w"], out[f"{p}ln1.b"] = block.norm1.weight, block.norm1.bias
        if block.mlp is not None:
            if isinstance(block.norm2, torch.nn.LayerNorm):
                out[f"{p}ln2.w"], out[f"{p}ln2.b"] = block.norm2.weight, block.norm2.bias
            out[f"{p}mlp.W_in"], out[f"{p}mlp.b_in"] = block.mlp[0].weight.T, block.mlp[0].bias
            out[f"{p}mlp.W_out"], out[f"{p}mlp.b_out"] = block.mlp[2].weight.T, block.mlp[2].bias
    if isinstance(model.norm, torch.nn.LayerNorm):
        out["ln_final.w"], out["ln_final.b"] = model.norm.weight, model.norm.bias
    out["unembed.W_U"], out["unembed.b_U"] = model.readout.weight.T, model.readout.bias
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def to_transformer_lens(run):
    """TransformerLens's TransformerBridge with the run's weights, in eval mode on the CPU."""
    _, TransformerBridge, convert_tl_checkpoint = require()
    cfg = tl_config(run)
    bridge = TransformerBridge.boot_native(cfg)
    bridge.load_state_dict(convert_tl_checkpoint(state_dict(run.model), bridge.cfg), strict=True)
    if run.model.padding is not None:
        mask_padding(bridge, run.model.padding)
    return bridge.eval()


def mask_padding(bridge, padding: int) -> None:
    """A variable-length run (data.min_len) pads its examples on the right, and attnlab masks the padded keys inside
    attention. TransformerLens's model masks them only when a call passes attention_mask; without it the logits
    would differ silently. So every forward that is not given one gets `tokens != padding`: calls, run_with_cache
    and run_with_hooks alike (they call bridge.forward, which this replaces on the instance)."""
    forward = bridge.forward

    def forward_with_mask(input, *args, attention_mask=None, **kwargs):
        if attention_mask is None and torch.is_tensor(input) and not input.is_floating_point():
            attention_mask = torch.atleast_2d(input != padding).long()  # [batch, pos]: 1 on tokens, 0 on padding
        return forward(input, *args, attention_mask=attention_mask, **kwargs)

    bridge.forward = forward_with_mask
