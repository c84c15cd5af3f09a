"""scripts/experiments.py writes README's recipes table: --read-only writes nothing, and no table replaces it that
is built from runs which are not there. The script runs from a copy of the repository's layout (scripts/, conf/,
a README with the markers), so that whatever it writes lands in tmp_path, never in the tree under test."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attnlab import pages
from conftest import script_module

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "experiments.py"
PAGE = "# A page\n\n<!-- experiments:start -->\nthe table measured before\n<!-- experiments:end -->\n\nthe rest\n"


@pytest.fixture
def repo(tmp_path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts")
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    (tmp_path / "README.md").write_text(PAGE)
    return tmp_path


def experiments(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(repo / "scripts" / "experiments.py"), *args], cwd=repo,
                          capture_output=True, text=True, timeout=120)


def test_read_only_without_out_is_refused_and_writes_nothing(repo):
    finished = experiments(repo, "--read-only")
    assert finished.returncode == 2, finished.stdout + finished.stderr
    assert finished.stderr.startswith("error: --read-only: needs --out DIR") and finished.stderr.count("\n") == 1
    assert (repo / "README.md").read_text() == PAGE
    assert not (repo / "outputs").exists()


def test_read_only_prints_the_table_and_writes_nothing(repo):
    out = repo / "outputs" / "experiments" / "earlier"
    out.mkdir(parents=True)
    finished = experiments(repo, "--read-only", "--out", str(out), "--only", "copy")
    assert finished.returncode == 0, finished.stderr
    assert "| `copy` | not run |" in finished.stdout
    assert list(out.iterdir()) == []  # no results.md, results.json
    assert (repo / "README.md").read_text() == PAGE


def test_the_page_keeps_its_table_unless_every_recipe_has_all_its_runs(tmp_path, monkeypatch, capsys):
    script = script_module("experiments")
    page = tmp_path / "README.md"
    page.write_text(PAGE)
    monkeypatch.setattr(script, "PAGE", page)
    seed = {"seed": 0, "steps": 99, "solved_step": 99, "seq_acc": 1.0, "align": 0.99, "wall_s": 3.0}
    ran = {"recipe": "copy", "task": "copy", "model": "1/1/32", "supervised": False, "sweep_wall_s": 30.0,
           "cpu_per_seed_s": 5.0, "stacked": False, "jobs": [dict(seed, seed=s) for s in range(script.SEEDS)]}
    for missing in ({"recipe": "reverse", "not_run": True}, dict(ran, recipe="reverse", jobs=ran["jobs"][:3])):
        results = [ran, missing]
        with pytest.raises(SystemExit) as stop:
            script.write_page(script.table(results), results)
        assert stop.value.code == 1
        assert "left as it is: reverse lack runs" in capsys.readouterr().err
        assert page.read_text() == PAGE
    # A failed seed ran: its row says so, and the table is written.
    failed = dict(ran, recipe="reverse", jobs=ran["jobs"][:9] + [{"seed": None, "error": "diverged", "wall_s": 1.0}])
    script.write_page(script.table([ran, failed]), [ran, failed])
    written = page.read_text()
    assert "the table measured before" not in written and "| `reverse` | 1/1/32 | 9/10 (1 failed) |" in written
    assert written.startswith("# A page\n\n<!-- experiments:start -->\n") and written.endswith("end -->\n\nthe rest\n")


def test_the_line_above_the_table_says_how_the_seeds_ran():
    script = script_module("experiments")
    joblib, stacked = {"recipe": "a", "stacked": False}, {"recipe": "b", "stacked": True}
    assert "seeds 0-9 as `hydra/launcher=joblib hydra.launcher.n_jobs=2` jobs," in script.machine([joblib], True)
    assert "seeds 0-9 as `hydra/launcher=stacked` models, a group per core," in script.machine([stacked], True)
    both = script.machine([joblib, stacked], True)
    assert "where the wall per seed says (stacked)" in both
    assert "(stacked)" in script.row({**stacked, "task": "copy", "model": "1/1/32", "supervised": False,
                                       "sweep_wall_s": 30.0, "cpu_per_seed_s": 5.0, "jobs": []})


def test_readme_says_how_its_rows_ran():
    """The line above README's table says how the seeds ran as the script's writer would for those rows."""
    script = script_module("experiments")
    start, end = pages.markers(script.MARKERS)
    text = (ROOT / "README.md").read_text().split(start)[1].split(end)[0]
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows
    results = [{"recipe": row.split("`")[1], "stacked": "(stacked)" in row} for row in rows]
    how = script.machine(results, True).split(f"seeds 0-{script.SEEDS - 1} ")[1].split(", tabled")[0]
    assert f"seeds 0-{script.SEEDS - 1} {how}, " in text.splitlines()[1]
