"""4. The article's explicit attention steps vs F.scaled_dot_product_attention, forward + backward, outputs and
gradients checked equal."""

import time

import torch
from torch import Tensor

from attnlab.attention import SelfAttention
from attnlab.bench.harness import Report, Sizes, alternate, say, table


def attention_seconds(layer: SelfAttention, x: Tensor, need_weights: bool) -> tuple[float, Tensor, list[Tensor]]:
    """One forward + backward; returns (seconds, output, gradients of x and the four weights)."""
    x = x.detach().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    output, _ = layer(x, need_weights)
    output.square().sum().backward()
    seconds = time.perf_counter() - start
    return seconds, output.detach(), [x.grad] + [p.grad for p in (layer.W_Q, layer.W_K, layer.W_V, layer.W_O)]


def measure(sizes: Sizes, report: Report) -> None:
    rows, all_equal = [], True
    say(f"attention: dims {sizes.attention_dims} x lengths {sizes.attention_lengths}, explicit and fused alternated")
    torch.manual_seed(0)
    for dim in sizes.attention_dims:
        heads = max(1, dim // 64)  # d_head 64, as in most transformers
        layer = SelfAttention(dim, heads, causal=True)
        for length in sizes.attention_lengths:
            batch = max(1, sizes.attention_tokens // length)
            x = torch.randn(batch, length, dim)
            _, explicit_out, explicit_grads = attention_seconds(layer, x, True)  # warm-up, and the check
            _, fused_out, fused_grads = attention_seconds(layer, x, False)
            difference = max((a - b).abs().max().item() for a, b in zip([explicit_out] + explicit_grads, [fused_out] + fused_grads))
            scale = max(t.abs().max().item() for t in [explicit_out] + explicit_grads)
            equal = difference <= 1e-4 * max(1.0, scale)
            all_equal &= equal
            explicit, fused = alternate(
                lambda: attention_seconds(layer, x, True)[0], lambda: attention_seconds(layer, x, False)[0],
                rounds=sizes.attention_repeats,
            )
            e, f = min(explicit), min(fused)
            rows.append(
                (dim, heads, length, batch, f"{1e3 * e:.2f}", f"{1e3 * f:.2f}", f"{e / f:.2f}x",
                 f"{batch * length / f / 1e3:.0f}k", f"{difference:.1e}" + ("" if equal else " **differ**"))
            )  # fmt: skip
    longest = [r for r in rows if r[2] == max(sizes.attention_lengths)]
    report.target(
        f"fused / explicit attention speed-up at seq {max(sizes.attention_lengths)} (fwd+bwd)",
        ", ".join(f"dim {r[0]}: {r[6]}" for r in longest), "-", None,
    )
    report.target("explicit and fused attention: same outputs and gradients", "yes" if all_equal else "NO", "equal", all_equal)
    report.details.append(
        "### 4. Attention paths (one causal SelfAttention layer, forward + backward, float32)\n\n"
        f"Batch = {sizes.attention_tokens} tokens / seq len; best of {sizes.attention_repeats} alternated repeats. "
        "Max |difference| over the output and the gradients of x, W_Q, W_K, W_V, W_O.\n\n"
        + table(
            ["dim", "heads", "seq len", "batch", "explicit ms", "fused ms", "speed-up", "fused tokens/s", "max |diff|"], rows
        )
    )

