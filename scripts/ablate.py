"""Does a trained model use its task's target pattern? Replace one head's attention by a pattern on the rows the
target covers and score the validation set again.

    python scripts/ablate.py RUN_DIR [RUN_DIR ...]

Per run, per layer with a target and per head, val/seq_acc and val/acc with that head's attention:
  learned   as trained (the run's own score);
  target    the task's target pattern (rows normalised to sum 1), the rest of the model as trained;
  support   the head's own weights on the target's cells only (BOS and the same tokens, say), renormalised: the
            target's choice of keys with the head's own balance between them;
  uniform   spread evenly over the keys the row may see: a control, which tells whether the head matters at all.
and, where the layer has several heads, every head cut to the support at once ("all support"). Where a task gives each
head of a layer its own selector (the RASP tasks: docs/rasp.md), each head is tried on each selector (`L0H1 S0
target`: head 1 replaced by selector 0), and "all support" cuts each head to its own selector's cells. A model that
computes with the target pattern keeps its accuracy under `target`; one that attends to the target's keys but
weighs them its own way keeps it under `support` only; one that solved the task some other way loses it under
both, while `uniform` shows what the head was worth.

    python scripts/ablate.py --by-token RUN_DIR

also splits each head's target rows by the query's input token: per token, the head's alignment on those rows and
val/seq_acc with the target (or the even spread) put on those rows only. A head that uses the target for some
tokens and another pattern for others shows it there: its accuracy holds where the target replaces the tokens it
uses the target for, and falls where it replaces the others.
"""

from __future__ import annotations  # torch's Tensor in annotations, not imported at the top

import argparse
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from attnlab.config import ConfigError
from attnlab.resume import check_run_dir

# torch and the model are imported in the functions that use them: main() refuses a path that is not a run
# directory first, without their import (seconds).
if TYPE_CHECKING:
    from torch import Tensor

    from attnlab.attention import SelfAttention


@contextlib.contextmanager
def replaced(attention: SelfAttention, patterns: dict[int, Tensor]):
    """Each head h of `patterns` attends as patterns[h] [batch, query, key] says on the rows where it has mass (the
    rows without keep the learned weights); the other heads and the output projection are left as they are."""
    import torch

    from attnlab.attention import SelfAttention

    masses = {head: pattern.sum(-1, keepdim=True) for head, pattern in patterns.items()}  # [batch, query, 1]

    def forward(x: Tensor, need_weights: bool = True, keep: Tensor | None = None):  # SelfAttention.forward's
        _, weights = SelfAttention.forward(attention, x, True, keep)  # [batch, head, query, key]
        weights = weights.clone()
        for head, pattern in patterns.items():
            mass = masses[head]
            weights[:, head] = torch.where(mass > 0, pattern / mass.clamp(min=1e-12), weights[:, head])
        value = attention._split_heads(x @ attention.W_V)  # [batch, head, key, d_head]
        return attention._merge_heads(weights @ value) @ attention.W_O, weights

    attention.forward = forward  # an instance attribute: nn.Module.__call__ finds it before the class's
    try:
        yield
    finally:
        del attention.forward


def uniform_like(target: Tensor, causal: bool) -> Tensor:
    """Even weight over the keys each target row may see (all keys, or those up to the query when causal)."""
    import torch

    n = target.shape[-1]
    allowed = torch.ones(n, n).tril() if causal else torch.ones(n, n)  # [query, key]
    return allowed.expand_as(target) * (target.sum(-1, keepdim=True) > 0)


def ablate(run_dir: Path, by_token: bool = False) -> tuple[int, dict[str, tuple[float, ...]]]:
    """(the checkpoint's step, {"learned" | "L{layer}H{head} target" | "L{layer}H{head} support" | "L{layer}H{head}
    uniform" | "L{layer} all support": (val/seq_acc, val/acc)}) over the run's validation set; with by_token
    also, per query token t on the target's rows, "L{layer}H{head} token {name}": (alignment on those rows,
    val/seq_acc with the target there only, val/seq_acc with the even spread there only). Where the task gives each
    head of a layer its own selector (Task.head_targets: the RASP programs'), every head is tried on every selector
    S: "L{layer}H{head} S{S} target" and so on, and "all support" puts each head on its own selector's cells."""
    import torch

    from attnlab.data import TaskDataModule
    from attnlab.inspection import load_run
    from attnlab.module import scores

    run = load_run(run_dir)
    data = TaskDataModule(run.task, run.cfg.data.batch_size, run.cfg.data.val_size, run.cfg.seed)
    data.setup("validate")
    inputs, targets, mask = data.validation

    @torch.no_grad()
    def score() -> tuple[float, float]:
        logits, _ = run.model(inputs)
        result = scores(logits, targets, mask)
        return result["seq_acc"].item(), result["acc"].item()

    results = {"learned": score()}
    with torch.no_grad():
        _, learned = run.model(inputs, need_weights=True)  # per layer [batch, head, query, key]
    names = run.task.token_names()
    for layer, block in enumerate(run.model.blocks):
        selectors = run.task.layer_targets(inputs, layer)
        if selectors is None:
            continue
        # [batch, selector, query, key]: the layer's selectors, one per head, where the task gives each head its own
        # (the RASP programs'), else its one target, which any head may take
        per_head = selectors.dim() == 4
        selectors = selectors if per_head else selectors.unsqueeze(1)
        for s in range(selectors.shape[1]):
            target = selectors[:, s]
            uniform = uniform_like(target, block.attention.causal)
            for head in range(block.attention.heads):
                name = f"L{layer}H{head} S{s}" if per_head else f"L{layer}H{head}"
                support = learned[layer][:, head] * (target > 0)
                for kind, pattern in (("target", target), ("support", support), ("uniform", uniform)):
                    with replaced(block.attention, {head: pattern}):
                        results[f"{name} {kind}"] = score()
                if not by_token:
                    continue
                rows = target.sum(-1) > 0  # [batch, query]
                share = support.sum(-1)  # [batch, query]: the head's mass on the target's cells
                for token in inputs[rows].unique().tolist():
                    these = (rows & (inputs == token)).unsqueeze(-1)  # [batch, query, 1]
                    with replaced(block.attention, {head: target * these}):
                        on_target = score()[0]
                    with replaced(block.attention, {head: uniform * these}):
                        spread = score()[0]
                    align = share[these.squeeze(-1)].mean().item()
                    results[f"{name} token {names[token]}"] = (align, on_target, spread)
        if block.attention.heads > 1:  # every head at once on its own selector's cells (or on the layer's one target's)
            heads = range(min(block.attention.heads, selectors.shape[1]) if per_head else block.attention.heads)
            own = {h: learned[layer][:, h] * (selectors[:, h if per_head else 0] > 0) for h in heads}
            with replaced(block.attention, own):
                results[f"L{layer} all support"] = score()
    return run.step, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", metavar="RUN_DIR", type=Path, nargs="+", help="run directories (or sweep jobs)")
    parser.add_argument("--by-token", action="store_true",
                        help="also per query token: alignment, and the target / even spread on its rows only")
    args = parser.parse_args(argv)
    try:
        for run_dir in args.run_dirs:
            check_run_dir(run_dir)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)
    try:
        for run_dir in args.run_dirs:
            step, results = ablate(run_dir, args.by_token)
            print(f"{run_dir} (step {step}): val/seq_acc / val/acc, with the head's attention replaced")
            for name, values in results.items():
                if " token " in name:  # alignment on the token's rows, then val/seq_acc under target / uniform there
                    align, on_target, spread = values
                    print(f"    {name:18s} align {align:.2f}, target there {on_target:.3f}, uniform there {spread:.3f}")
                else:
                    print(f"    {name:18s} {values[0]:.3f} / {values[1]:.3f}")
            if len(results) == 1:
                print("    (the task has no target pattern at any layer of this model)")
            sys.stdout.flush()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
