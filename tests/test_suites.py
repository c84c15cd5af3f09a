"""attnlab.suites, what scripts/length_study.py and scripts/rasp_suite.py share: choosing recipes with --only,
running a recipe's sweep once with its times recorded, and the mean ± standard deviation of the tables."""

import json
import sys
from pathlib import Path

import pytest

from attnlab import suites

NAMES = ["reverse", "reverse_minus_layer", "sort"]


def test_only_picks_in_the_suites_order_and_refuses_an_unknown_name(capsys):
    assert suites.chosen(Path("conf/experiment/rasp"), None, NAMES) == NAMES
    assert suites.chosen(Path("conf/experiment/rasp"), "sort,reverse", NAMES) == ["reverse", "sort"]
    with pytest.raises(SystemExit) as exit:
        suites.chosen(Path("conf/experiment/rasp"), "sort,revers", NAMES)
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["error: --only: no recipe revers in conf/experiment/rasp (have: reverse, reverse_minus_layer, sort)"]


def test_a_sweep_runs_once_with_its_wall_and_cpu_recorded(tmp_path):
    """A stand-in sweep that burns some CPU and writes two jobs' metrics.json: run and recorded the first time, read
    as it is the second."""
    sweep_dir = tmp_path / "reverse"
    write_jobs = ("import sys, pathlib\n"
                  "sum(i * i for i in range(3_000_000))\n"
                  "for seed in (0, 1):\n"
                  "    job = pathlib.Path(sys.argv[1]) / f'seed={seed}'\n"
                  "    job.mkdir(parents=True)\n"
                  "    (job / 'metrics.json').write_text('{}')\n")  # fmt: skip
    command = [sys.executable, "-c", write_jobs, str(sweep_dir)]
    times = suites.recorded_sweep(command, sweep_dir, jobs=2, cwd=tmp_path, seeds=2)
    assert times is not None and times["seeds"] == 2
    assert 0 < times["cpu_s"] <= times["wall_s"] + 0.5  # one process: no more CPU than wall
    assert json.loads((sweep_dir / "wall.json").read_text()) == times == suites.times(sweep_dir)
    assert suites.recorded_sweep(command, sweep_dir, jobs=2, cwd=tmp_path) is None  # finished: not run again
    assert suites.times(tmp_path / "sort") == {}  # never run: nothing recorded


def test_spread():
    assert suites.spread([]) == "–"
    assert suites.spread([0.5]) == "0.50 ± 0.00"
    assert suites.spread([0.9, 1.0], 3) == "0.950 ± 0.071"
