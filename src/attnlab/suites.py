"""What the suite scripts (scripts/length_study.py, scripts/rasp_suite.py) share: a suite is the recipes of one
conf/experiment/ folder, each trained as one sweep into its own directory under the suite's, with its wall and CPU
time recorded beside it (wall.json), then tabled as mean ± standard deviation over the seeds."""

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

TIMES = "wall.json"  # beside each recipe's sweep: its wall and CPU seconds


def chosen(folder: Path, only: str | None, names: list[str]) -> list[str]:
    """The recipes named by --only (comma-separated), in `names`' order; all of them without --only. An unknown name
    is one line naming it and the folder's recipes, and exit 2."""
    if not only:
        return names
    asked = only.split(",")
    unknown = sorted(set(asked) - set(names))
    if unknown:
        print(f"error: --only: no recipe {', '.join(unknown)} in {folder} (have: {', '.join(names)})", file=sys.stderr)
        sys.exit(2)
    return [n for n in names if n in asked]


def recorded_sweep(command: list[str], sweep_dir: Path, jobs: int, cwd: Path, **record) -> dict | None:
    """Runs `command` (a multirun into sweep_dir) unless sweep_dir already holds `jobs` finished jobs; writes its wall
    and CPU seconds (and `record`) into sweep_dir/wall.json (TIMES) and returns them (None where it was finished before). CPU
    counts the sweep's processes, its workers too, all reaped by the time it ends: about the same on a busy machine as
    on an idle one, unlike the wall."""
    if len(list(sweep_dir.rglob("metrics.json"))) >= jobs:
        print(f"== {sweep_dir.name}: finished in {sweep_dir}, read as it is", flush=True)
        return None
    sweep_dir.mkdir(parents=True, exist_ok=True)
    print(f"== {sweep_dir.name}: {' '.join(command[1:])}", flush=True)
    start, cpu = time.perf_counter(), children_cpu()
    finished = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if finished.returncode != 0:
        print(finished.stderr[-3000:], file=sys.stderr)
    times = {"wall_s": time.perf_counter() - start, "cpu_s": children_cpu() - cpu, **record}
    (sweep_dir / TIMES).write_text(json.dumps(times) + "\n")
    return times


def times(sweep_dir: Path) -> dict:
    """What recorded_sweep wrote for the sweep (wall_s, cpu_s where recorded, and its `record`); {} where nothing."""
    path = sweep_dir / TIMES
    return json.loads(path.read_text()) if path.is_file() else {}


def children_cpu() -> float:
    """User + system CPU seconds of this process's finished children and theirs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def spread(values: list[float], digits: int = 2) -> str:
    """Mean ± standard deviation (0 for one value); "–" for none."""
    if not values:
        return "–"
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {deviation:.{digits}f}"
