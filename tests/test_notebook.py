"""The notebooks (notebooks/tour.ipynb, notebooks/rasp.ipynb) run top to bottom on the CPU (each trains its own tiny
run) and are kept without outputs."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", ["tour", "rasp"])
def test_kept_without_outputs(name):
    """Outputs stay out of git: a diff of the notebook is a diff of its code."""
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


def executed(name: str, where: Path) -> tuple[list, list[str]]:
    """Each code cell's outputs and their text, the notebook run in `where` (its own run directory goes there)."""
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(where)}}).execute()
    outputs = [cell.outputs for cell in notebook.cells if cell.cell_type == "code"]
    return outputs, ["".join(o.get("text", "") for o in cell) for cell in outputs]


def test_runs(tmp_path):
    outputs, text = executed("tour", tmp_path)
    assert "steps kept: [0, 1, 2, 4, 8, 16, 32, 64, 128]" in text[0]
    assert "scores from q and k match hook_attn_scores: True" in text[2]
    accuracies = [float(line.rsplit(" ", 1)[1]) for line in text[3].splitlines()]
    assert accuracies[0] > 0.9 and min(accuracies[1:]) < accuracies[0]  # it learned, and a head matters
    assert sum("image/png" in o.get("data", {}) for cell in outputs for o in cell) == 2  # the two figures
    assert (tmp_path / "outputs" / "notebook-tour" / "checkpoints" / "step=128.ckpt").is_file()
    assert "patterns equal: True" in text[5] or "needs TransformerLens" in text[5]


def test_rasp_runs(tmp_path):
    """The RASP notebook on its supervised double histogram: every selector has a head on it, the model learned the
    task, a head keeps the accuracy with its own selector in its place and loses it with another, and TransformerLens
    sees the same patterns through the padding."""
    outputs, text = executed("rasp", tmp_path)
    assert "task rasp_double_hist, 2 layers x 2 heads, step 400" in text[0]
    assert sum("image/png" in o.get("data", {}) for cell in outputs for o in cell) == 1  # heads beside selectors
    aligned = [line.split(": ")[1].split(", ") for line in text[2].splitlines()]
    assert len(aligned) == 3  # layer 0's two selectors, layer 1's one
    assert all(max(float(head.rsplit(" ", 1)[1]) for head in heads) >= 0.9 for heads in aligned)
    lines = text[3].splitlines()
    trained = float(lines[0].rsplit(" ", 1)[1])
    replaced = [float(line.rsplit(" ", 1)[1]) for line in lines[1:]]
    assert trained > 0.9 and len(replaced) == 6  # 2 heads x 2 selectors in layer 0, 2 heads x 1 in layer 1
    assert max(replaced) >= trained - 0.05 and min(replaced) < trained - 0.3
    assert "patterns equal: True" in text[4] or "needs TransformerLens" in text[4]
