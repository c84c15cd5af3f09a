"""An example and its attention maps as text for the terminal: one cell per weight, token labels on both axes.

Three styles: "color" (ANSI 256-colour backgrounds, viridis like the TensorBoard images; for a terminal),
"shade" (unicode shade blocks; plain text for files and pipes) and "ascii" (where the output cannot encode unicode).
"""

import os
from bisect import bisect_right
from typing import TextIO

from torch import Tensor

from attnlab import viz
from attnlab.inspection import Example

STYLES = ("color", "shade", "ascii")
# A weight falls into the bin of the last threshold it reaches: < 0.05 blank, then ·, ░, ▒, ▓, █ (>= 0.8).
THRESHOLDS = (0.05, 0.2, 0.4, 0.6, 0.8)
SHADES = {"shade": " ·░▒▓█", "ascii": " .:=%@"}
CUBE = (0, 95, 135, 175, 215, 255)  # the xterm 256-colour palette's 6x6x6 cube levels (colours 16-231)


def choose_style(stream: TextIO, color: str = "auto") -> str:
    """color: "always", "never" or "auto" (colour only on a terminal, and not where NO_COLOR is set)."""
    if color == "always" or (
        color == "auto" and stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
    ):
        return "color"
    try:
        SHADES["shade"].encode(getattr(stream, "encoding", None) or "utf-8")  # None: a str buffer takes any text
        return "shade"
    except (UnicodeEncodeError, LookupError):
        return "ascii"


def _xterm(rgb: list[int]) -> int:
    """The nearest colour of the xterm 256-colour cube."""
    r, g, b = (min(range(6), key=lambda i: abs(CUBE[i] - c)) for c in rgb)
    return 16 + 36 * r + 6 * g + b


def cell(value: float, width: int, style: str) -> str:
    if style == "color":
        rgb = viz.colormap("viridis")[round(min(max(value, 0.0), 1.0) * 255)].tolist()
        return f"\x1b[48;5;{_xterm(rgb)}m{' ' * width}\x1b[0m"
    char = SHADES[style][bisect_right(THRESHOLDS, value)]
    return char.rjust(width) if char in "·." else char * width


def legend(style: str) -> str:
    if style == "color":
        return "0 " + "".join(cell(v / 9, 2, style) for v in range(10)) + " 1   (viridis, as in TensorBoard)"
    marks = SHADES[style]
    bins = [f"< {THRESHOLDS[0]}"] + [f">= {t}" for t in THRESHOLDS]
    return "   ".join(f"{m!r} {b}" for m, b in zip(marks, bins))


def example_table(names: list[str], example: Example) -> str:
    """The example position by position: input, target and prediction where the answer is scored."""
    n = len(example.inputs)
    width = max(max(len(name) for name in names), len(str(n - 1))) + 1
    row = lambda label, cells: f"{label:<10}" + "".join(c.rjust(width) for c in cells)  # noqa: E731
    lines = [row("position", [str(p) for p in range(n)]), row("input", [names[t] for t in example.inputs.tolist()])]
    if example.answer_known:
        scored = example.mask.tolist()
        lines.append(row("target", [names[t] if m else "·" for t, m in zip(example.targets.tolist(), scored)]))
        lines.append(row("predicted", [names[t] if m else "·" for t, m in zip(example.predictions.tolist(), scored)]))
        wrong = ((example.predictions != example.targets) & example.mask).tolist()
        if any(wrong):
            lines.append(row("wrong", ["^" if w else "" for w in wrong]))
        lines.append(f"answer: {example.right}/{int(example.mask.sum())} tokens right (teacher-forced: each predicted "
                     "from the true tokens before it)")
    else:
        lines.append(row("predicted", [names[t] for t in example.predictions.tolist()]))
        lines.append("answer: this task does not say what the answer to a given input is, so nothing is scored")
    return "\n".join(lines)


def attention_maps(names: list[str], example: Example, style: str, columns: int = 120) -> str:
    """Every layer's heads (and the task's target pattern, where it has one) side by side as far as `columns`
    allows. Rows are queries (position, token, and the token it should predict), columns keys."""
    inputs = [names[t] for t in example.inputs.tolist()]
    width = max(2, 1 + max(len(name) for name in inputs))  # characters per cell
    arrow = "->" if style == "ascii" else "→"
    digits, token_width = len(str(len(inputs) - 1)), max(len(name) for name in inputs)
    labels = []
    for p, token in enumerate(inputs):
        predicts = f"{arrow}{names[example.targets[p]]}" if example.mask[p] else ""
        labels.append(f"{p:>{digits}} {token:>{token_width}} {predicts}")
    label_width = max(len(label) for label in labels) + 1
    header = "".join(token.rjust(width) for token in inputs)

    panels: list[tuple[str, Tensor | None]] = []
    for layer, (weights, target) in enumerate(zip(example.attention, example.target_attention)):
        align = example.alignment[layer]
        panels += [(f"layer {layer} head {h}" + ("" if align is None or align[h].isnan() else f" align {align[h]:.2f}"),
                    w) for h, w in enumerate(weights)]
        if target is not None and target.dim() == 3:  # per-head targets
            panels += [(f"layer {layer} target {h}", pattern) for h, pattern in enumerate(target)]
        elif target is not None:
            panels.append((f"layer {layer} target", target))
    # A panel is as wide as its cells, or its title where that is longer (short sequences); cells are padded to it.
    cells_width = width * len(inputs)
    panel_width = max([cells_width] + [len(title) for title, _ in panels])
    padding = " " * (panel_width - cells_width)
    per_line = max(1, (columns - label_width) // (panel_width + 3))

    out = []
    for start in range(0, len(panels), per_line):
        chunk = panels[start : start + per_line]
        out.append(" " * label_width + "   ".join(title.ljust(panel_width) for title, _ in chunk))
        out.append(" " * label_width + "   ".join(header + padding for _ in chunk))
        for q, label in enumerate(labels):
            cells = ["".join(cell(float(v), width, style) for v in values[q].tolist()) + padding for _, values in chunk]
            out.append(label.ljust(label_width) + "   ".join(cells))
        out.append("")
    out.append(f"rows: queries (position, token, {arrow}the token it should predict); columns: keys; " + legend(style))
    return "\n".join(line.rstrip() for line in out)
