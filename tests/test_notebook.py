"""notebooks/tour.ipynb runs top to bottom on the CPU (it trains its own tiny run) and is kept without outputs."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "tour.ipynb"


def test_kept_without_outputs():
    """Outputs stay out of git: a diff of the notebook is a diff of its code."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


def test_runs(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # run where the notebook's own run directory (outputs/notebook-tour) goes into tmp_path
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [cell.outputs for cell in notebook.cells if cell.cell_type == "code"]
    text = ["".join(o.get("text", "") for o in cell) for cell in outputs]
    assert "steps kept: [0, 1, 2, 4, 8, 16, 32, 64, 128]" in text[0]
    assert "scores from q and k match hook_attn_scores: True" in text[2]
    accuracies = [float(line.rsplit(" ", 1)[1]) for line in text[3].splitlines()]
    assert accuracies[0] > 0.9 and min(accuracies[1:]) < accuracies[0]  # it learned, and a head matters
    assert sum("image/png" in o.get("data", {}) for cell in outputs for o in cell) == 2  # the two figures
    assert (tmp_path / "outputs" / "notebook-tour" / "checkpoints" / "step=128.ckpt").is_file()
    assert "patterns equal: True" in text[5] or "needs TransformerLens" in text[5]
