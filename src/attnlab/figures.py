"""Figures for papers and slides (scripts/inspect_run.py): attention grids and weight matrices with labelled axes
and colour bars, drawn with matplotlib's Agg backend straight to PNG (no window, no pyplot state). Training logs
cheap colormap-lookup images instead (viz.py); these are drawn once per call."""

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
from torch import Tensor

from attnlab.inspection import Example, circuits, direct_circuits, head_weights
from attnlab.model import AttentionModel

INCHES_PER_CELL = 0.22  # matrices larger than ~12 cells grow their panel; smaller ones keep MIN_PANEL
MIN_PANEL = 2.4


def _ticks(ax, labels: list[str] | None, axis: str) -> None:
    if labels is None:
        return
    set_ticks, set_labels = (ax.set_xticks, ax.set_xticklabels) if axis == "x" else (ax.set_yticks, ax.set_yticklabels)
    set_ticks(range(len(labels)))
    long = max(len(label) for label in labels) > 2
    set_labels(labels, fontsize=7, rotation=90 if axis == "x" and long else 0)


def _suptitle(fig: Figure, title: str) -> None:
    """The title, wrapped to the figure's width (about 11 characters per inch at this size)."""
    width = max(20, int(fig.get_figwidth() * 11))
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in title.splitlines()), fontsize=10)


def attention_figure(names: list[str], example: Example, title: str) -> Figure:
    """Layers x heads of attention maps (rows queries, columns keys, token names on both axes), the task's target
    pattern in the last column where it has one, and one colour bar (weights 0..1, viridis as in TensorBoard)."""
    tokens = [names[t] for t in example.inputs.tolist()]
    # Query labels say what each row predicts where the answer is scored: "6 →2" reads "token 6, predicts 2".
    queries = [f"{tok} →{names[t]}" if m else tok for tok, t, m in zip(tokens, example.targets.tolist(), example.mask.tolist())]
    layers, heads = len(example.attention), len(example.attention[0])
    # One target column, or with per-head targets one per head that has one.
    target_columns = max([0] + [1 if t.dim() == 2 else len(t) for t in example.target_attention if t is not None])
    columns = heads + target_columns
    panel = max(MIN_PANEL, INCHES_PER_CELL * len(tokens))
    fig = Figure(figsize=(panel * columns + 1.5, panel * layers + 1.0), layout="constrained")
    axes = fig.subplots(layers, columns, squeeze=False)
    image = None
    for layer in range(layers):
        target = example.target_attention[layer]
        for column in range(columns):
            ax = axes[layer][column]
            if column < heads:
                weights = example.attention[layer][column]  # [query, key]
                image = ax.imshow(weights.numpy(), vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
                align = example.alignment[layer]
                score = "" if align is None or align[column].isnan() else f"  (alignment {align[column]:.2f})"
                ax.set_title(f"layer {layer} head {column}{score}", fontsize=9)
            elif target is not None and target.dim() == 2 and column == heads:
                ax.imshow(target.numpy(), vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
                ax.set_title(f"layer {layer}: target pattern", fontsize=9)
            elif target is not None and target.dim() == 3 and column - heads < len(target):
                ax.imshow(target[column - heads].numpy(), vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
                ax.set_title(f"layer {layer}: head {column - heads}'s target", fontsize=9)
            elif target is not None:
                ax.set_axis_off()
                continue
            else:
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"no known target\nfor layer {layer}", ha="center", va="center", transform=ax.transAxes)
                continue
            _ticks(ax, tokens, "x")
            _ticks(ax, queries if column == 0 else None, "y")
            if column:
                ax.set_yticks([])
            if layer == layers - 1:
                ax.set_xlabel("key", fontsize=8)
            if column == 0:
                ax.set_ylabel("query", fontsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="attention weight")
    _suptitle(fig, title)
    return fig


@dataclass
class Matrices:
    """One column of a weights figure: a matrix per head, drawn on one symmetric colour scale."""

    name: str
    per_head: list[Tensor]
    ylabel: str
    xlabel: str
    yticks: list[str] | None = None
    xticks: list[str] | None = None
    note: str = field(default="")


def matrices_figure(columns: list[Matrices], title: str) -> Figure:
    """Heads (rows) x matrices (columns); each column on its own scale ±max|value| (blue negative, white 0, red
    positive) with its own colour bar, so that matrices of different sizes of numbers stay readable."""
    heads = len(columns[0].per_head)
    sizes = [max(c.per_head[0].shape) for c in columns]
    panel = max(MIN_PANEL, INCHES_PER_CELL * 0.5 * max(sizes))
    fig = Figure(figsize=(panel * len(columns) + 1.5, (panel + 0.9) * heads + 0.8), layout="constrained")
    axes = fig.subplots(heads, len(columns), squeeze=False)
    for j, column in enumerate(columns):
        scale = max(float(m.abs().max()) for m in column.per_head) or 1.0
        for head, matrix in enumerate(column.per_head):
            ax = axes[head][j]
            image = ax.imshow(matrix.float().cpu().numpy(), vmin=-scale, vmax=scale, cmap="RdBu_r", interpolation="nearest")
            ax.set_title(f"head {head}: {column.name}", fontsize=9)
            _ticks(ax, column.xticks, "x")
            _ticks(ax, column.yticks, "y")
            if column.xticks is None:
                ax.set_xticks([])
            if column.yticks is None:
                ax.set_yticks([])
            ax.set_ylabel(column.ylabel, fontsize=7)
            if head == heads - 1:
                ax.set_xlabel(column.xlabel + (f"\n{column.note}" if column.note else ""), fontsize=7)
        fig.colorbar(image, ax=[axes[h][j] for h in range(heads)], shrink=0.8, location="bottom", aspect=15)
    _suptitle(fig, title)
    return fig


def save(fig: Figure, path: Path, dpi: int = 110) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def weight_figures(model: AttentionModel, names: list[str], layer: int) -> dict[str, Figure]:
    """Layer `layer` explained: "weights" (each head's W_Q, W_K, W_V, W_O) and "circuits" (each head's QK and OV
    circuits, plus for layer 0 the same read through the embeddings: token QK, position QK, token OV)."""
    attention = model.blocks[layer].attention
    dim, d_head = attention.dim, attention.d_head
    w = head_weights(attention)
    weights = [
        Matrices("W_Q", w["W_Q"], "input dim", "query dim"),
        Matrices("W_K", w["W_K"], "input dim", "key dim"),
        Matrices("W_V", w["W_V"], "input dim", "value dim"),
        Matrices("W_O", w["W_O"], "value dim", "output dim"),
    ]
    c = circuits(attention)
    circuit_columns = [
        Matrices("QK = W_Q W_Kᵀ", c["QK"], "query-side dim", "key-side dim", note="score = x_q QK x_kᵀ / √d_head"),
        Matrices("OV = W_V W_O", c["OV"], "attended input dim", "output dim"),
    ]
    if layer == 0:
        d = direct_circuits(model, layer)
        positions = [str(p) for p in range(model.positions.shape[0])]
        circuit_columns += [
            Matrices("token QK = E QK Eᵀ", d["token QK"], "query token", "key token", names, names),
            Matrices("position QK = P QK Pᵀ", d["position QK"], "query position", "key position", positions, positions),
            Matrices("token OV = E OV Uᵀ", d["token OV"], "attended token", "logit raised", names, names),
        ]
    what = f"layer {layer}, {attention.heads} head(s), dim {dim}, d_head {d_head}"
    return {
        "weights": matrices_figure(weights, f"{what}: per-head slices of W_Q, W_K, W_V (columns) and W_O (rows)"),
        "circuits": matrices_figure(circuit_columns, f"{what}: QK and OV circuits"
                                    + ("; E: embedding, P: positions, U: readout" if layer == 0 else "")),
    }
