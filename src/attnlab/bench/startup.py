"""3. Launching scripts/train.py to its first training step, vs a bare `import lightning.pytorch`."""

import statistics
import sys
import tempfile
import time
from pathlib import Path

from attnlab.bench.harness import TRAIN, Report, Sizes, first_step_time, launch, rounds_of, say, table


def measure(sizes: Sizes, report: Report) -> None:
    def bare_import() -> tuple[float, float, float]:
        return launch([sys.executable, "-c", "import lightning.pytorch"])

    def to_first_step() -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as tmp:
            offset = time.perf_counter() - time.time()  # event files hold time.time()
            start, _, _ = launch(
                [sys.executable, str(TRAIN), f"hydra.run.dir={tmp}", "trainer.max_steps=1", "logging.every_n_steps=1"]
            )
            return start, first_step_time(Path(tmp)) + offset

    rounds = sizes.startup_rounds
    say(f"startup: {rounds} rounds of a bare import and scripts/train.py to its first step, interleaved")
    bare, train = rounds_of(bare_import, to_first_step, rounds=rounds)
    extra = statistics.median(t[0] - b[0] for b, t in zip(bare, train))
    report.target("start-up: scripts/train.py to first step, minus bare import", f"{extra:+.2f} s", "<= +1.5 s", extra <= 1.5)
    report.details.append(
        "### 3. Start-up\n\n"
        f"{rounds} rounds, the two commands of a round interleaved as in section 1; medians of the rounds. First "
        "step: the earliest training-step scalar in the run's event file (written with `logging.every_n_steps=1`), "
        "against the launch time.\n\n"
        + table(
            ["", "seconds"],
            [('`python -c "import lightning.pytorch"`', f"{statistics.median(b[0] for b in bare):.2f}"),
             ("`python scripts/train.py` to its first training step", f"{statistics.median(t[0] for t in train):.2f}"),
             ("difference (median of the rounds')", f"{extra:+.2f}")],
        )  # fmt: skip
    )

