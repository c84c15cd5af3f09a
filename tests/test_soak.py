"""scripts/soak.py: a short soak with the default warm-up (a tenth of the run) ends with its summary, a warm-up the run
never gets past is refused before training, and --help shows the whole docstring."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "soak.py"
TINY = ["model.dim=16", "data.seq_len=4", "logging.every_n_steps=2", "logging.images_every_n_steps=0"]


def soak(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_short_soak_fits_the_samples_after_its_warmup(tmp_path):
    """As the docstring's `--steps 2000` example, smaller: the run is shorter than the old fixed 2000-step warm-up."""
    finished = soak("--steps", "60", "--every", "0.1", "--run-dir", str(tmp_path / "run"), *TINY, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "soak.json").read_text())["summary"]
    assert summary["steps"] == 60 and summary["overrides"] == TINY
    assert 50 < summary["rss_mb_at_warmup"] <= summary["rss_mb_max_after_warmup"]
    assert summary["events_mb_total"] > 0 and summary["events_mb_per_1000_steps"] > 0


def test_a_warmup_the_run_never_passes_is_refused_before_training(tmp_path):
    finished = soak("--steps", "2000", "--warmup", "2000", "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert finished.returncode == 2
    assert finished.stderr == "error: --warmup must be at least 0 and below --steps (2000), got 2000\n"
    assert not (tmp_path / "run").exists()


def test_help_is_the_whole_docstring():
    import ast

    docstring = ast.get_docstring(ast.parse(SCRIPT.read_text()))
    shown = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True).stdout
    for paragraph in docstring.split("\n\n"):
        assert paragraph.strip() in shown
