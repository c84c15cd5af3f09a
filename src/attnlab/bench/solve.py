"""6. The default config (a user's `python scripts/train.py`) until val/seq_acc >= 0.99."""

import sys
import tempfile
import time
from pathlib import Path

from attnlab.bench.harness import TRAIN, Report, Sizes, first_step_time, launch, say, table


def measure(sizes: Sizes, report: Report) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not sizes.solve:
        report.notes.append("Time to solve skipped (--quick).")
        return
    say("solve: the default config until val/seq_acc >= 0.99")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        launched, ended, _ = launch([sys.executable, str(TRAIN), f"hydra.run.dir={tmp}"])
        total = ended - launched
        first = first_step_time(Path(tmp))
        solved = None
        for events in Path(tmp).rglob("events.out.tfevents.*"):
            accumulator = EventAccumulator(str(events.parent))
            accumulator.Reload()
            if "val/seq_acc" in accumulator.Tags()["scalars"]:
                solved = next((e for e in accumulator.Scalars("val/seq_acc") if e.value >= 0.99), None)
    if solved is None:
        report.target("default config: launch to val/seq_acc >= 0.99", "not reached", "-", False)
        return
    report.target("default config: launch to val/seq_acc >= 0.99", f"{solved.wall_time - start:.1f} s (step {solved.step})", "-", None)
    report.details.append(
        "### 6. Time to solve\n\n`python scripts/train.py` (default config and logging), one run.\n\n"
        + table(
            ["", "wall s"],
            [("launch to first training step", f"{first - start:.1f}"),
             (f"launch to val/seq_acc >= 0.99 (step {solved.step}, val/seq_acc {solved.value:.3f})", f"{solved.wall_time - start:.1f}"),
             ("launch to exit (stops at trainer.stop_at, then final validation and checkpoint)", f"{total:.1f}")],
        )  # fmt: skip
    )

