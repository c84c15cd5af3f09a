"""1b. The hand-written loop with device.threads (1, the default) vs torch's default of one thread per core."""

import os
import statistics

import torch

from attnlab.bench.harness import Report, Sizes, config, rounds_of, say, table
from attnlab.bench.loop import hand_written_window


def measure(sizes: Sizes, report: Report) -> None:
    """The hand-written loop (no framework at all) at the default size, with device.threads (1) and with torch's
    default of one thread per core: what the device.threads default is based on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    steps = sizes.threads_steps
    cfg = config(["logging=off", "device=cpu", f"trainer.max_steps={steps}"])
    chosen = cfg.device.threads

    def at(threads: int) -> tuple[float, float, float]:
        torch.set_num_threads(threads)  # in the side's own process
        return hand_written_window(cfg, sizes.warmup_steps)

    rounds = min(sizes.rounds, 3)
    say(f"threads: {rounds} rounds of {steps} hand-written steps at {chosen} and {cores} threads, interleaved")
    one, all_cores = rounds_of(lambda: at(chosen), lambda: at(cores), rounds=rounds)
    timed = steps - sizes.warmup_steps
    rate = lambda side: statistics.median(timed / r[0] for r in side)  # noqa: E731
    cpu_per_step = lambda side: statistics.median(r[1] / timed for r in side)  # noqa: E731
    ratio = statistics.median(a[0] / o[0] for o, a in zip(one, all_cores))
    report.target(f"default size, device.threads={chosen} / torch's default ({cores} threads), steps/s", f"{ratio:.1f}x", "-", None)
    report.details.append(
        "### 1b. Torch threads\n\n"
        f"The hand-written loop at the default size, {steps} steps, with `device.threads={chosen}` (the default) and "
        f"with torch's default of one thread per core ({cores}); median of {rounds} interleaved rounds.\n\n"
        + table(
            ["threads", "steps/s", "CPU time per step"],
            [(chosen, f"{rate(one):.0f}", f"{cpu_per_step(one) * 1e3:.1f} ms"),
             (cores, f"{rate(all_cores):.0f}", f"{cpu_per_step(all_cores) * 1e3:.1f} ms")],
        )  # fmt: skip
    )

