"""2. The default TensorBoard logging (scalars, attention maps, weight images and histograms, progress bar) as a
share of a run's wall time, against logging=off."""

import statistics
import tempfile
import time
from pathlib import Path

from omegaconf import DictConfig

from attnlab.bench.harness import Report, Sizes, config, quiet, rounds_of, say, table
from attnlab.train import run


def run_window(cfg: DictConfig) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as run_dir, quiet():
        start = time.perf_counter()
        run(cfg, Path(run_dir))
        return start, time.perf_counter()


def spread(values: list[float]) -> str:
    """The lowest, the quartiles and the highest, in %."""
    points = [min(values), *statistics.quantiles(values, n=4), max(values)] if len(values) > 1 else values
    return " / ".join(f"{100 * x:.1f}%" for x in points)


def measure(sizes: Sizes, report: Report) -> None:
    steps = sizes.logging_steps
    common = ["device=cpu", "trainer.stop_at=null", f"trainer.max_steps={steps}"]
    on, off = config(common), config(common + ["logging=off"])
    rounds = sizes.logging_rounds
    say(f"logging: {rounds} rounds of {steps}-step runs, default logging and logging=off interleaved")
    run_window(on), run_window(off)  # once untimed, in this process: what the sides' processes inherit is imported
    with_logging, without = rounds_of(lambda: run_window(on), lambda: run_window(off), rounds=rounds)
    shares = [1 - o[0] / w[0] for w, o in zip(with_logging, without)]
    share = statistics.median(shares)
    lg = on.logging
    report.target("default logging, share of a run's wall time", f"{100 * share:.1f}%", "<= 5%", share <= 0.05)
    report.details.append(
        "### 2. Logging cost\n\n"
        f"Whole `train.run` of {steps} steps (validation every {on.trainer.val_every_n_steps}), default logging "
        f"(scalars every {lg.every_n_steps} steps; attention maps, weight images and histograms every "
        f"{lg.images_every_n_steps}; progress bar) vs `logging=off`, {rounds} rounds, the two runs of a round "
        "interleaved as in section 1; the share is the median of the rounds' shares.\n\n"
        + table(
            ["run", "seconds (median)"],
            [("default logging", f"{statistics.median(w[0] for w in with_logging):.2f}"),
             ("logging=off", f"{statistics.median(o[0] for o in without):.2f}"),
             ("logging share", f"{100 * share:.1f}%"),
             ("share per round: lowest / quartiles / highest", spread(shares))],
        )  # fmt: skip
    )

