"""The summary of an existing sweep directory (what a multirun writes when it ends): summary.csv, summary.png and
the table on the terminal.

    python scripts/summarize_sweep.py outputs/multirun/2026-01-01/10-00-00
    python scripts/summarize_sweep.py outputs/multirun/2026-01-01/10-00-00 --metric val/loss
"""

import argparse
import sys
from pathlib import Path

from attnlab.config import ConfigError
from attnlab.summary import summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun's directory (holds multirun.yaml and one dir per job)")
    parser.add_argument("--metric", help="the metric to plot (default: the sweep's optimized_metric, else val/seq_acc)")
    args = parser.parse_args()
    if not args.sweep_dir.is_dir():
        print(f"error: sweep_dir {args.sweep_dir} is not a directory", file=sys.stderr)
        sys.exit(2)
    try:
        summarize(args.sweep_dir, args.metric)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
