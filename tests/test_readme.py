"""CI installs and tests exactly as the README tells a user to."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd ", "rm "))]
    assert len(ci) == 1, ci
    assert ci[0] in readme
    assert ci[0].endswith("python -m pytest") and "pip install -q torch==2.13.0" in ci[0]


def test_readme_install_and_train_command_trains_the_default():
    readme = (ROOT / "README.md").read_text().splitlines()
    assert any(line.startswith("python3 -m venv .venv") and line.endswith("python scripts/train.py") for line in readme)
