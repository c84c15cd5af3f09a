"""How fast is attnlab? `python scripts/bench.py` measures, side by side in one run, and writes its report into
docs/bench.md and its summary table into docs/performance.md (between the bench markers), each as a part named by
the sections it measured: a run of some sections (--sections) replaces their part and keeps the others'. One
module per section, each with its `measure(sizes, report)`; harness.py holds what they share (sizes, the report,
interleaved runs):

1. loop       framework (train.run, logging off) vs a hand-written PyTorch loop: steps/s, same model, batches,
              optimiser and device, at the default size and a larger one
1b. threads   the hand-written loop with device.threads (1) vs torch's default, one thread per core
2. logging    the default TensorBoard logging (scalars, attention maps, weight images and histograms, progress
              bar) as a share of a run's wall time, against logging=off
3. startup    launching scripts/train.py to its first training step, vs a bare `import lightning.pytorch`
4. attention  the article's explicit steps vs F.scaled_dot_product_attention, forward + backward, outputs and
              gradients checked equal
5. sweep      a sweep of short jobs under Hydra's basic launcher vs the joblib launcher with 2 workers (n_jobs=2):
              8 jobs (throughput), and 2 (as many jobs as workers: start-up bound)
6. solve      the default config (a user's `python scripts/train.py`) until val/seq_acc >= 0.99
7. stacked    hydra/launcher=stacked (its default n_jobs, a group per core, and n_jobs=1): 8 seeds (and 32 small
              ones) as whole sweep commands against the basic and joblib launchers; one group's steps against the
              same model at the group's whole batch; peak memory of the largest process and of all together
8. lengths    variable-length examples (data.min_len = seq_len / 2, pads masked) vs fixed length: examples/s

    python scripts/bench.py                    # everything (~15 min on 2 CPU cores); docs/bench.md, performance.md
    python scripts/bench.py --sections loop,startup
    python scripts/bench.py --quick --out /tmp/bench.md --page none   # tiny sizes: checks that it runs
"""

import argparse
import os
import sys
from pathlib import Path

import torch

from attnlab.bench import attention, lengths, logging_cost, loop, solve, stacked, startup, sweep, threads
from attnlab.bench.harness import QUICK, ROOT, Report, Sizes, config, render, update_page, write_report

# In the order they run and report.
SECTIONS = {"loop": loop, "threads": threads, "logging": logging_cost, "startup": startup, "attention": attention,
            "sweep": sweep, "solve": solve, "stacked": stacked, "lengths": lengths}  # fmt: skip
PAGE = ROOT / "docs" / "performance.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {','.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs (figures are meaningless)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench.md"), help="where the full report goes")
    parser.add_argument("--page", default=str(PAGE), help="the page whose bench section is replaced; 'none' to leave it")
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; allowed: {', '.join(SECTIONS)}")
    if args.quick and args.page != "none" and Path(args.page).resolve() == PAGE:
        parser.error(f"--quick figures are meaningless: pass --page none (or another file than {PAGE.name}) with --quick")

    sizes = QUICK if args.quick else Sizes()
    threads_per_run = config([]).device.get("threads")
    if threads_per_run:  # every side of every comparison with the threads a default run has (attnlab/sweep.py sets them)
        torch.set_num_threads(threads_per_run)
    report = Report()
    load_start = os.getloadavg()[0]
    for name, section in SECTIONS.items():
        if name in sections:
            section.measure(sizes, report)
    command = "python scripts/bench.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    full, summary = render(report, args.quick, (load_start, os.getloadavg()[0]), command)
    print(full)
    measured = [s for s in SECTIONS if s in sections]
    write_report(Path(args.out), full, measured, list(SECTIONS))
    if args.page != "none":
        link = os.path.relpath(args.out, Path(args.page).parent)
        update_page(Path(args.page), summary + f"\n\nDetails per section: [{Path(args.out).name}]({link}).", measured,
                    list(SECTIONS))
