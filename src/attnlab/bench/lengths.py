"""8. Variable-length examples (data.min_len = seq_len / 2: padded, every attention path masking the pads) against
fixed-length ones at the same data.seq_len: training examples/s of whole runs (train.run, logging off), interleaved."""

import statistics

from attnlab.bench.harness import Report, Sizes, config, rounds_of, say, table
from attnlab.bench.loop import framework_window


def measure(sizes: Sizes, report: Report) -> None:
    steps, skip = sizes.loop_steps, sizes.warmup_steps
    base = ["logging=off", "device=cpu", "trainer.stop_at=null", f"trainer.max_steps={steps}",
            f"trainer.val_every_n_steps={steps}", "data.val_size=64"]  # fmt: skip
    fixed = config(base)
    variable = config([*base, f"++data.min_len={fixed.data.seq_len // 2}"])  # a key conf/data does not list
    say(f"lengths: {sizes.rounds} rounds of {steps} steps, fixed and variable length interleaved")
    framework_window(variable, skip)  # once untimed: what the sides' processes inherit is imported
    fixed_runs, variable_runs = rounds_of(
        lambda: framework_window(fixed, skip), lambda: framework_window(variable, skip), rounds=sizes.rounds
    )
    batch, timed = fixed.data.batch_size, steps - skip
    rate = lambda r: batch * timed / r[0]  # examples per second of its own turns  # noqa: E731
    ratios = [f[0] / v[0] for f, v in zip(fixed_runs, variable_runs)]
    ratio = statistics.median(ratios)
    report.target(
        "variable / fixed length, examples/s (data.min_len = seq_len / 2)", f"{ratio:.2f}x", ">= 0.9x", ratio >= 0.9
    )
    m = fixed.model
    report.details.append(
        "### 8. Variable-length examples (logging=off, device=cpu)\n\n"
        f"The default run ({fixed.data.task}, dim {m.dim}, {m.heads} head(s), {m.layers} layer(s), batch {batch}) at "
        f"data.seq_len={fixed.data.seq_len}, fixed length against data.min_len={variable.data.min_len}: every "
        "example its own length, right-padded, the pads masked in the fused kernel (a boolean mask instead of "
        f"is_causal). {sizes.rounds} interleaved rounds of {steps} steps; examples/s over all but the first {skip} "
        "steps, per second of a side's own turns, median of the rounds.\n\n"
        + table(
            ["side", "positions", "examples/s", "variable / fixed, each round"],
            [("fixed length", str(fixed_positions(fixed)), f"{statistics.median(map(rate, fixed_runs)):.0f}", ""),
             ("variable length", str(fixed_positions(variable)), f"{statistics.median(map(rate, variable_runs)):.0f}",
              ", ".join(f"{r:.2f}" for r in ratios))],
        )  # fmt: skip
    )


def fixed_positions(cfg) -> int:
    """Positions the model sees in training (the variable-length stream has a separator)."""
    from attnlab.tasks import make_task

    return make_task(cfg.data).length
