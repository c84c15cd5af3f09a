"""Inspect a trained run: run one example through its last checkpoint, print the prediction and every head's attention
in the terminal, and draw them as a PNG (with --weights also the weights and QK/OV circuits) in RUN_DIR/inspect/.

    python scripts/inspect_run.py outputs/2026-11-24/06-25-07                          # the probe example
    python scripts/inspect_run.py outputs/2026-11-24/06-25-07 --input "3 1 4 1 5 9 2 6"
    python scripts/inspect_run.py outputs/2026-11-24/06-25-07 --weights

--input takes the task's tokens by name, separated by spaces or commas. For copy, reverse and sort give x (data.seq_len
tokens; in a run with data.min_len or data.val_lengths any length n from the task's shortest to the longest of
data.seq_len and data.val_lengths); the script builds the stream x_0 … x_{n-1} y_0 … y_{n-2} the model reads (with
the separator after x in a variable-length run, as in training), with the true answer y, and the prediction is
teacher-forced (each answer token predicted from the true tokens before it, as in training and in val/acc). Named
inspect_run.py, not inspect.py: that would shadow Python's own inspect module.
"""

import argparse
import hashlib
import re
import shutil
import sys
from pathlib import Path

from attnlab.config import ConfigError
from attnlab.resume import check_run_dir


def file_stem(text: str | None) -> str:
    """attention-probe, or attention-<the tokens> (hashed when long or unusual), so that inputs do not overwrite
    each other's pictures."""
    if text is None:
        return "attention-probe"
    stem = "_".join(text.replace(",", " ").split())
    if len(stem) > 60 or not re.fullmatch(r"[\w.-]+", stem):
        stem = hashlib.sha1(stem.encode()).hexdigest()[:12]
    return f"attention-{stem}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a run directory: outputs/<date>/<time>")
    parser.add_argument("--input", help='the example, e.g. "3 1 4 1 5 9 2 6" (default: the probe example)')
    parser.add_argument("--weights", action="store_true", help="also draw W_Q, W_K, W_V, W_O and the QK/OV circuits")
    parser.add_argument("--out", type=Path, help="where the PNGs go (default: RUN_DIR/inspect)")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour heatmaps in the terminal (auto: when stdout is a terminal and NO_COLOR is unset)")
    args = parser.parse_args(argv)

    # Bad input fails at once: the path before torch's import (seconds), the tokens before Lightning's (seconds more).
    try:
        check_run_dir(args.run_dir)
        from attnlab.inspection import describe, load_run, parse_example, run_config, run_example, run_task

        batch = None
        if args.input is not None:  # data.val_lengths: the longest input the model has positions for
            val_lengths = list(run_config(args.run_dir).data.get("val_lengths") or [])
            batch = parse_example(run_task(args.run_dir), args.input, val_lengths)
        run = load_run(args.run_dir)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if batch is None:
        batch = run.probe

    # Imported after the checks: matplotlib is only needed once there is something to draw.
    from attnlab import figures, terminal

    example = run_example(run, batch)
    names = run.task.token_names()
    style = terminal.choose_style(sys.stdout, args.color)
    source = "the probe example (the first validation example, as in TensorBoard)" if args.input is None else f"--input {args.input!r}"
    print(f"run      {run.dir}\n         {describe(run)}\nexample  {source}\n")
    print(terminal.example_table(names, example) + "\n")
    print(terminal.attention_maps(names, example, style, shutil.get_terminal_size((120, 24)).columns))

    out = args.out or run.dir / "inspect"
    tokens = " ".join(names[t] for t in example.inputs.tolist())
    title = f"{Path(*run.dir.resolve().parts[-2:])} · {describe(run)}\ninput: {tokens}"  # the run's last two names
    written = [figures.save(figures.attention_figure(names, example, title), out / f"{file_stem(args.input)}.png")]
    if args.weights:
        for layer in range(len(run.model.blocks)):
            for kind, fig in figures.weight_figures(run.model, names, layer).items():
                written.append(figures.save(fig, out / f"{kind}-layer{layer}.png"))
    print("\nwrote " + "\n      ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
