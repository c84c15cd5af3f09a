"""A sweep's jobs grouped over seeds: where jobs differ only in `seed`, one row per setting (the other swept values)
with n, how many finished and how many solved, and mean, std, min and max of each final metric and of the step at
which the run reached trainer.stop_at. attnlab.summary writes it as summary_seeds.csv, prints it under the jobs'
table and draws it in summary.png. Made from the job dicts of attnlab.summary.read_jobs, so from files only, whichever
launcher ran the jobs.
"""

import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

SEED = "seed"
STEP = "step"  # in metrics.json: the step the final weights are of (attnlab.train.run)
SOLVED_STEP = "solved_step"  # the step trainer.stop_at was reached; a column of the grouped table, not a metric
# Where trainer.stop_at is null nothing stops a run, and a job counts as solved at this final val/seq_acc (the
# same line as scripts/experiments.py's "solved after").
SOLVED = 0.99
SEQ_ACC = "val/seq_acc"


def solved_step(job: dict) -> int | None:
    """The step at which the job's run passed trainer.stop_at, None where it did not (or stop_at is null). Training
    stops at the validation that first passes it (Lightning's EarlyStopping: val/seq_acc > stop_at), so that is
    the step its final metrics are of, and they still pass it (the same weights, the same validation set)."""
    stop_at, metrics = job.get("stop_at"), job["metrics"]
    if job["status"] != "ok" or stop_at is None or STEP not in metrics or metrics.get(SEQ_ACC, 0) <= stop_at:
        return None
    return int(metrics[STEP])


def solved(job: dict) -> bool:
    if job.get("stop_at") is None:
        return job["status"] == "ok" and job["metrics"].get(SEQ_ACC, 0) >= SOLVED
    return solved_step(job) is not None


@dataclass
class Setting:
    params: dict  # the swept values other than the seed
    jobs: list[dict]

    def values(self, name: str) -> list[float]:
        """The finished jobs' values of a final metric, or of SOLVED_STEP (the solved jobs' only)."""
        if name == SOLVED_STEP:
            return [float(s) for s in map(solved_step, self.jobs) if s is not None]
        return [float(job["metrics"][name]) for job in self.jobs if job["status"] == "ok" and name in job["metrics"]]

    def stats(self, name: str) -> tuple[float, float, float, float] | None:
        """(mean, std, min, max); std is the sample's (n - 1), NaN for a single value."""
        values = self.values(name)
        if not values:
            return None
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        return statistics.fmean(values), std, min(values), max(values)

    def finished(self) -> int:
        """Jobs with final metrics: not failed, interrupted or left unstarted by a stopped sweep."""
        return sum(job["status"] == "ok" for job in self.jobs)

    def seeds(self) -> str:
        return " ".join(str(job["params"].get(SEED, "")) for job in self.jobs)


def settings(jobs: list[dict], axes: list[str]) -> list[Setting] | None:
    """The jobs grouped by their swept values other than the seed, in the order first seen; None unless the seed
    is swept and some setting has more than one seed (then there is nothing to aggregate)."""
    if SEED not in axes:
        return None
    others = [key for key in axes if key != SEED]
    groups: dict[tuple, Setting] = {}
    for job in jobs:
        params = {key: job["params"].get(key) for key in others}
        groups.setdefault(tuple(repr(v) for v in params.values()), Setting(params, [])).jobs.append(job)
    groups = list(groups.values())
    return groups if any(len(g.jobs) > 1 for g in groups) else None


def aggregated(metrics: list[str]) -> list[str]:
    """What the grouped table aggregates: every final metric but the step (SOLVED_STEP says more), then SOLVED_STEP."""
    return [m for m in metrics if m != STEP] + [SOLVED_STEP]


def write_csv(groups: list[Setting], metrics: list[str], path: Path) -> None:
    keys = list(groups[0].params)
    names = aggregated(metrics)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow([*keys, "seeds", "n", "finished", "solved", *(f"{m}_{s}" for m in names for s in ("mean", "std", "min", "max"))])
        for group in groups:
            cells = []
            for name in names:
                stats = group.stats(name)
                cells += ["" if stats is None or math.isnan(v) else v for v in stats or (None,) * 4]
            out.writerow([
                *group.params.values(), group.seeds(), len(group.jobs), group.finished(),
                sum(map(solved, group.jobs)), *cells,
            ])  # fmt: skip


def _cell(stats: tuple | None, digits: str = ".4g") -> str:
    if stats is None:
        return ""
    mean, std, low, high = stats
    spread = "" if math.isnan(std) else f" ± {std:{digits}}"
    return f"{mean:{digits}}{spread} [{low:{digits}}, {high:{digits}}]"


def table(groups: list[Setting], shown: list[str]) -> str:
    """For the terminal: per setting n, solved, and mean ± std [min, max] of the shown metrics and SOLVED_STEP."""
    keys = list(groups[0].params)
    head = [*keys, "n", "finished", "solved", *shown, SOLVED_STEP]
    rows = [
        [*map(str, g.params.values()), str(len(g.jobs)), str(g.finished()),
         str(sum(map(solved, g.jobs))), *(_cell(g.stats(m)) for m in shown), _cell(g.stats(SOLVED_STEP), ".0f")]
        for g in groups
    ]  # fmt: skip
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
