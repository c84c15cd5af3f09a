"""scripts/inspect_run.py and scripts/ablate.py refuse a path that is not a run directory before importing torch,
and inspect_run.py refuses a token the run's task does not have before importing Lightning: bad input is answered
at once, as scripts/train.py answers it. Each script runs in a fresh interpreter, which reports at its exit which of
the slow imports it had made."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The script as __main__, then (at its exit, whatever the exit code) the slow imports it made, on stderr's last line.
PROBE = """import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("imported:", *(m for m in ("torch", "lightning") if m in sys.modules), file=sys.stderr)
"""


def refuse(script: str, *args, cwd: Path) -> tuple[str, str]:
    """(the error line, the slow modules imported by then) of a run of scripts/<script> that exits with 2."""
    finished = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "scripts" / script), *map(str, args)],
                              cwd=cwd, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2, finished.stderr
    error, imported = finished.stderr.splitlines()
    return error, imported


@pytest.mark.parametrize("script", ["inspect_run.py", "ablate.py"])
def test_a_path_that_is_not_a_run_is_refused_before_torch(tmp_path, script):
    (tmp_path / "no checkpoint" / ".hydra").mkdir(parents=True)
    (tmp_path / "no checkpoint" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    for path, message in [(tmp_path / "nowhere", "is not a directory"),
                          (tmp_path / "no checkpoint" / ".hydra", "is not a run directory: it has no .hydra/config.yaml"),
                          (tmp_path / "no checkpoint", "has no checkpoints/last.ckpt (did its training finish?)")]:
        error, imported = refuse(script, path, cwd=tmp_path)
        assert error == f"error: RUN_DIR: {path} {message}"
        assert imported == "imported:", f"{script} {path}: {imported}"


def test_ablate_checks_every_run_before_any(tiny_run, tmp_path):
    error, imported = refuse("ablate.py", tiny_run, tmp_path / "nowhere", cwd=tmp_path)
    assert error == f"error: RUN_DIR: {tmp_path / 'nowhere'} is not a directory" and imported == "imported:"


def test_a_token_the_task_has_not_is_refused_before_lightning(tiny_run, tmp_path):
    # Without the pictures tests/test_inspect_run.py may have drawn into the shared run before.
    run_dir = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("inspect"))
    error, imported = refuse("inspect_run.py", run_dir, "--input", "3 1 0 X", cwd=tmp_path)
    assert error == "error: --input: 'X' is not a token of task reverse (tokens: 0 1 2 3 4 5 6 7 8 9)"
    assert imported == "imported: torch"  # the task's tokens need torch's task classes, not Lightning
    assert not (run_dir / "inspect").exists()


def test_tab_speed_without_selenium_says_what_to_install(tmp_path):
    """As after the plain install: selenium cannot be imported. One line naming the extra, before anything runs."""
    hide = "import sys; sys.modules['selenium'] = None; sys.argv = sys.argv[1:]; import runpy; " \
           "runpy.run_path(sys.argv[0], run_name='__main__')"
    finished = subprocess.run([sys.executable, "-c", hide, str(ROOT / "scripts" / "tab_speed.py"), str(tmp_path)],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 1
    assert finished.stderr == ("error: scripts/tab_speed.py drives Chromium through selenium, which is not "
                               "installed: pip install -e '.[test]'\n")
