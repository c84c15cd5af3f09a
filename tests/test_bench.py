"""scripts/bench.py runs at tiny sizes and writes its report and its page's summary section. No timing is asserted: the
figures of a --quick run mean nothing; only that every section ran and reported is checked."""

import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from attnlab.bench import harness
from conftest import ROOT

BENCH = ROOT / "scripts" / "bench.py"


def test_quick_bench_writes_report_and_page_section(tmp_path, script_runs):
    page = tmp_path / "performance.md"
    page.write_text("# Title\n\nbefore\n<!-- bench:start -->\nold figures\n<!-- bench:end -->\nafter\n")
    out = tmp_path / "docs" / "bench.md"
    arguments = ["--quick", "--sections", "loop,logging,attention", "--out", str(out), "--page", str(page)]
    (result,) = script_runs.run(BENCH, [arguments], ROOT, timeout=240)  # its own process, forked
    assert result.returncode == 0, result.stderr[-3000:]

    report = out.read_text()
    # printed and written alike: the report file's one part, named by the sections the run measured
    assert report == f"# Benchmark\n\n<!-- bench-part: loop,logging,attention -->\n{result.stdout.strip()}\n<!-- bench-part-end -->\n"
    for heading in ("### 1. Framework vs hand-written loop", "### 2. Logging cost", "### 4. Attention paths"):
        assert heading in report
    assert "### 3." not in report and "### 5." not in report  # sections not asked for do not run
    # Every loop row has positive rates and ratios; the attention check found the paths equal.
    ratios = re.findall(r"\| (\d+\.\d+)x \| (\d+\.\d+)x \| [\d., ]+ \|\n", report)  # wall, CPU; each round
    assert len(ratios) == 2 and all(float(r) > 0 for pair in ratios for r in pair)
    assert "explicit and fused attention: same outputs and gradients | yes | equal | yes" in report
    assert re.search(r"default logging, share of a run's wall time \| -?\d+\.\d%", report)
    assert "QUICK" in report and "GPU figures: not measured" in report

    text = page.read_text()
    assert text.startswith("# Title\n\nbefore\n<!-- bench:start -->\n") and text.endswith("<!-- bench:end -->\nafter\n")
    assert "old figures" not in text and "| framework / bare Lightning, steps/s (default size) |" in text
    assert "Machine: " in text and "torch " in text


@pytest.fixture(scope="module")
def bench():
    return harness  # what the sections share: interleaved runs, the first step's time


SPIN = "import time\ncpu = time.process_time()\nwhile time.process_time() - cpu < {seconds}: pass"


def spin(cpu_seconds: float):
    """A side that computes for cpu_seconds of its own CPU time; its window is also passed on as `more`."""

    def side():
        start, cpu = time.perf_counter(), time.process_time()
        while time.process_time() - cpu < cpu_seconds:
            pass
        end = time.perf_counter()
        return start, end, time.process_time() - cpu, start, end

    return side


def test_interleaved_sides_run_at_the_same_time_taking_turns(bench):
    began = time.perf_counter()
    (a, cpu_a, *window_a), (b, cpu_b, *window_b) = bench.interleaved(spin(0.3), spin(0.3), turn=0.02)
    elapsed = time.perf_counter() - began
    assert max(window_a[0], window_b[0]) < min(window_a[1], window_b[1])  # their windows overlap...
    assert a + b <= elapsed  # ...but only one ran at a time
    assert a >= 0.95 * cpu_a and b >= 0.95 * cpu_b  # each counted at least the time it computed (one thread)
    assert a < window_a[1] - window_a[0] and b < window_b[1] - window_b[0]  # and not the other's turns


def test_interleaved_stops_a_side_with_the_processes_it_started(bench):
    def spin_in_a_subprocess():  # as the sweep section's sides do: the work is done by a command it runs
        start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", SPIN.format(seconds=0.3)], check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return start, time.perf_counter(), (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)

    (a, cpu_a), (b, _, *_) = bench.interleaved(spin_in_a_subprocess, spin(0.3), turn=0.02)
    # Had the subprocess gone on running in the other side's turns, its CPU time would exceed its side's time.
    assert a >= 0.95 * cpu_a >= 0.95 * 0.3


def children() -> set[int]:
    """The processes whose parent is this one, those that have ended but not been waited for (zombies) included."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError):  # ended while being read
            continue
        if ppid == os.getpid():
            found.add(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads this process's children from /proc")
def test_interleaved_raises_when_a_side_fails_and_leaves_no_side_behind(bench):
    def fails():
        raise ValueError("side failed")

    before = children()  # (the session's script server, tests/script_runs.py, may be one)
    with pytest.raises(RuntimeError, match="bench side 1 failed"):
        bench.interleaved(spin(0.1), fails, turn=0.02)
    assert children() == before  # every side's process has been waited for


def test_first_step_time_is_the_first_training_scalar(tiny_run, bench):
    """The start-up section's clock stop: the earliest lr-/train/ scalar of a run, after the run's first event
    (the config text, written before training) and no later than the first train/loss."""
    first_step = bench.first_step_time(tiny_run)
    events = EventAccumulator(str(tiny_run)).Reload()
    assert first_step <= events.Scalars("train/loss")[0].wall_time
    assert first_step >= events.FirstEventTimestamp()


def test_a_run_of_some_sections_replaces_their_part_of_the_report_and_keeps_the_others():
    from attnlab.bench.harness import merge_parts

    order = ["loop", "sweep", "stacked"]
    older = merge_parts("an older report without parts", "loop and sweep, run 1", ["loop", "sweep"], order)
    assert "older report" not in older
    both = merge_parts(older, "stacked, run 2", ["stacked"], order)
    assert both.index("loop and sweep, run 1") < both.index("stacked, run 2")
    again = merge_parts(both, "sweep, run 3", ["sweep"], order)  # measures sweep again: run 1's part goes
    assert "run 1" not in again and again.index("sweep, run 3") < again.index("stacked, run 2")
    assert again.count("<!-- bench-part:") == again.count("<!-- bench-part-end -->") == 2
