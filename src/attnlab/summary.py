"""A sweep's summary: summary.csv (a row per job), summary.png (the main metric against each swept value), a table
on the terminal, and, where jobs differ only in seed, the same per setting (attnlab.seeds: summary_seeds.csv).

Made from the files each job leaves (job.json, metrics.json, .hydra/) only, so it works the same whichever
launcher ran the jobs (in this process, joblib workers, submitit processes, SLURM nodes, a stacked group), and for
a sweep directory long after it ran (scripts/summarize_sweep.py).

Imported by Hydra for every run (the callback below): nothing heavy (torch, matplotlib) at the top.
"""

import csv
import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from attnlab import seeds, tags
from attnlab.config import ConfigError
from attnlab.sweep import JOB_FILE, METRICS_FILE

SUMMARY_CSV = "summary.csv"
SUMMARY_PLOT = "summary.png"
SUMMARY_SEEDS = "summary_seeds.csv"  # where jobs differ only in seed: one row per setting (attnlab.seeds)
DEFAULT_METRIC = "val/seq_acc"


def _value(text: str) -> Any:
    """An override's value as a number where it is one (for the plot's axis)."""
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


def read_jobs(sweep_dir: Path) -> list[dict]:
    """One dict per job directory under sweep_dir (any depth: an override value may hold a '/')."""
    jobs = []
    for hydra_dir in sorted(sweep_dir.rglob(".hydra")):
        run_dir = hydra_dir.parent
        record_file, metrics_file = run_dir / JOB_FILE, run_dir / METRICS_FILE
        if record_file.is_file():
            record = json.loads(record_file.read_text())
        else:  # the job's process ended without a word (killed, out of memory, a node lost)
            record = {"status": "failed", "error": "no job.json: the job's process ended without reporting"}
        from omegaconf import OmegaConf

        if "overrides" not in record:
            record["overrides"] = list(OmegaConf.load(hydra_dir / "overrides.yaml"))
        if (hydra_dir / "config.yaml").is_file():  # the job's own stop_at: was it reached (attnlab.seeds)?
            record["stop_at"] = OmegaConf.load(hydra_dir / "config.yaml").trainer.get("stop_at")
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        if record["status"] == "ok" and not metrics:
            record.update(status="failed", error=f"no {METRICS_FILE}")
        jobs.append({**record, "metrics": metrics, "run_dir": run_dir})
    # job.json of a run whose config was refused has no .hydra next to it (the entry point removed it)
    for record_file in sorted(sweep_dir.rglob(JOB_FILE)):
        if not (record_file.parent / ".hydra").is_dir():
            jobs.append({**json.loads(record_file.read_text()), "metrics": {}, "run_dir": record_file.parent})
    for job in jobs:
        job["params"] = {}
        for override in job["overrides"]:
            key, _, value = override.lstrip("+~").partition("=")
            job["params"][key] = _value(value)
    return sorted(jobs, key=lambda job: (job.get("job") is None, job.get("job") or 0, str(job["run_dir"])))


def swept_keys(jobs: list[dict]) -> list[str]:
    """The overrides that differ between jobs: the sweep's axes."""
    keys = []
    for job in jobs:
        keys += [k for k in job["params"] if k not in keys]
    return [k for k in keys if len({repr(job["params"].get(k)) for job in jobs}) > 1]


def metric_names(jobs: list[dict]) -> list[str]:
    names = []
    for job in jobs:
        names += [k for k in job["metrics"] if k not in names]
    return sorted(names, key=lambda name: (not name.startswith("val/"), names.index(name)))


def write_csv(jobs: list[dict], sweep_dir: Path, path: Path) -> None:
    axes, metrics = swept_keys(jobs), metric_names(jobs)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["job", "status", "overrides", *axes, *metrics, "wall_s", "error", "run_dir"])
        for job in jobs:
            out.writerow([
                job.get("job"), job["status"], " ".join(job["overrides"]),
                *(job["params"].get(k, "") for k in axes),
                *(job["metrics"].get(m, "") for m in metrics),
                job.get("wall_s", ""), job.get("error") or "", job["run_dir"].relative_to(sweep_dir).as_posix() or ".",
            ])


def shown_metrics(jobs: list[dict], metric: str) -> list[str]:
    """The metrics the terminal's tables show: the val ones, align/best where the task has a target, the main one."""
    names = metric_names(jobs)
    shown = [m for m in names if m.startswith("val/")] + [m for m in [tags.ALIGN_BEST] if m in names]
    return shown + ([metric] if metric not in shown else [])


def table(jobs: list[dict], metric: str) -> str:
    """The summary for the terminal: one row per job, the swept values, the val metrics and the main one."""
    axes, shown = swept_keys(jobs), shown_metrics(jobs, metric)
    head = ["job", "status", *axes, *shown, "wall_s"]
    rows = []
    for job in jobs:
        cells = [job.get("job", ""), job["status"], *(job["params"].get(k, "") for k in axes)]
        cells += [job["metrics"].get(m, "") for m in shown] + [job.get("wall_s", "")]
        rows.append(["" if c is None else f"{c:.4g}" if isinstance(c, float) else str(c) for c in cells])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines += [f"job {job.get('job', '?')} {job['status']}: {job.get('error')}" for job in jobs if job["status"] != "ok"]
    return "\n".join(lines)


def _positions(ax, key: str, jobs: list[dict]) -> list[float]:
    """Each job's place on a panel's x axis for a swept key, with the axis' scale and ticks set to suit it."""
    values = [job.get("job") if key == "job" else job["params"].get(key) for job in jobs]
    if all(isinstance(v, (int, float)) for v in values):
        x = [float(v) for v in values]
        if min(x) > 0 and max(x) / min(x) >= 10:
            ax.set_xscale("log")
            # Limits of its own before anything is drawn: a log axis autoscaled to the first setting's seeds alone
            # (one x value) is singular, and matplotlib warns.
            ax.set_xlim(min(x) / 2, max(x) * 2)
        elif len(set(x)) <= 8:  # a grid's few values (dim 16, 32, 64): tick each
            ax.set_xticks(sorted(set(x)), [f"{v:g}" for v in sorted(set(x))])
        return x
    labels = list(dict.fromkeys(map(str, values)))  # categories in the order first seen
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    return [labels.index(str(v)) for v in values]


def _spread(ax, groups: list["seeds.Setting"], x: dict[int, float], name: str) -> None:
    """Per setting: its seeds' values as faint dots, a line from their min to their max, the mean ± one std."""
    for group in groups:
        values, stats = group.values(name), group.stats(name)
        if stats is None:
            continue
        at = x[id(group.jobs[0])]
        mean, std, low, high = stats
        ax.scatter([at] * len(values), values, s=12, alpha=0.35, color="C0")
        ax.vlines(at, low, high, color="C0", lw=1)
        label = None if ax.get_legend_handles_labels()[1] else "mean ± std, line: min to max"
        ax.errorbar(at, mean, yerr=0 if std != std else std, fmt="o", color="C1", capsize=4, ms=6, label=label)


def plot(jobs: list[dict], metric: str, path: Path) -> None:
    """The main metric against each swept value, one panel per swept key; failed jobs as red crosses at the
    bottom. Where jobs differ only in seed, the panels are the other swept keys and each setting is drawn as its
    seeds' spread (_spread), with a second row for the step each seed reached trainer.stop_at. Drawn once per
    sweep, so a matplotlib figure (Agg: no display needed) is fine here."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_keys = swept_keys(jobs) or ["job"]
    groups = seeds.settings(jobs, axes_keys)
    names = [metric]
    if groups:
        axes_keys = [k for k in axes_keys if k != seeds.SEED] or ["job"]
        if any(g.values(seeds.SOLVED_STEP) for g in groups):
            names.append(seeds.SOLVED_STEP)
    shape = (len(names), len(axes_keys))
    fig, axes = plt.subplots(*shape, figsize=(4 * shape[1], 3.4 * shape[0]), squeeze=False, sharey="row")
    for column, key in enumerate(axes_keys):
        for row, name in enumerate(names):
            ax = axes[row][column]
            if groups and key == "job":  # the seed alone is swept: one setting, its seeds all at one place
                x = [0.0] * len(jobs)
                ax.set_xticks([0], [f"{len(jobs)} seeds"])
                ax.set_xlim(-1, 1)
            else:
                x = _positions(ax, key, jobs)
            if groups:
                _spread(ax, groups, {id(job): xi for job, xi in zip(jobs, x)}, name)
            else:
                ok = [(xi, job["metrics"][name]) for xi, job in zip(x, jobs) if name in job["metrics"]]
                if ok:
                    ax.scatter(*zip(*ok), s=30, alpha=0.7)
            failed = [xi for xi, job in zip(x, jobs) if job["status"] != "ok"]
            if failed and row == 0:  # on the axis' bottom edge, whatever the metric's range
                ax.plot(failed, [0.02] * len(failed), "rx", transform=ax.get_xaxis_transform(), label="failed")
            if ax.get_legend_handles_labels()[1]:
                ax.legend(loc="best", fontsize=8)
            ax.set_xlabel("" if groups and key == "job" else key)
            ax.grid(alpha=0.3)
    for row, name in enumerate(names):
        axes[row][0].set_ylabel(name if name != seeds.SOLVED_STEP else "step trainer.stop_at was reached")
    over = f", {len(groups)} setting(s) over seeds" if groups else ""
    fig.suptitle(f"{metric}, {len(jobs)} jobs{over}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summarize(sweep_dir: Path, metric: str | None = None) -> list[dict]:
    """Write summary.csv and summary.png into sweep_dir and print the table; where jobs differ only in seed, also
    summary_seeds.csv and its table (attnlab.seeds). The metric defaults to the sweep's optimized_metric
    (multirun.yaml), else val/seq_acc."""
    sweep_dir = Path(sweep_dir)
    jobs = read_jobs(sweep_dir)
    if not jobs:
        raise ConfigError(f"no runs found in {sweep_dir}: expected job directories holding .hydra/ (a multirun's sweep dir)")
    if metric is None:  # the one the jobs returned (the Optuna sweeper writes no multirun.yaml: ask a job)
        from omegaconf import OmegaConf

        configs = [sweep_dir / "multirun.yaml", *(job["run_dir"] / ".hydra" / "config.yaml" for job in jobs)]
        found = [OmegaConf.load(path).get("optimized_metric") for path in configs if path.is_file()]
        metric = next((m for m in found if m), DEFAULT_METRIC)
    write_csv(jobs, sweep_dir, sweep_dir / SUMMARY_CSV)
    plot(jobs, metric, sweep_dir / SUMMARY_PLOT)
    # "8 jobs, 1 failed"; a sweep stopped by a signal: "8 jobs, 2 interrupted, 6 not started"
    outcomes = [job["status"] for job in jobs if job["status"] != "ok"]
    counted = ", ".join(f"{outcomes.count(s)} {s}" for s in dict.fromkeys(sorted(outcomes))) or "0 failed"
    written = [sweep_dir / SUMMARY_CSV, sweep_dir / SUMMARY_PLOT]
    over_seeds = ""
    groups = seeds.settings(jobs, swept_keys(jobs))
    if groups:
        seeds.write_csv(groups, metric_names(jobs), sweep_dir / SUMMARY_SEEDS)
        written.insert(1, sweep_dir / SUMMARY_SEEDS)
        over_seeds = f"\n\nOver seeds, per setting:\n{seeds.table(groups, shown_metrics(jobs, metric))}"
    else:  # an older summary's, from jobs since changed (summarize_sweep.py on a sweep dir with jobs added)
        (sweep_dir / SUMMARY_SEEDS).unlink(missing_ok=True)
    print(f"\n{table(jobs, metric)}{over_seeds}\n\n{len(jobs)} jobs, {counted}. Summary: "
          f"{', '.join(map(str, written))}\nCompare them with:  tensorboard --logdir {sweep_dir} "
          "--samples_per_plugin images=1000")  # TensorBoard keeps 10 frames per image tag without it
    if {"interrupted", "not started"} & set(outcomes):  # each job also printed how to resume it alone
        print(f"Finish the sweep (every job left to do, in place):  python scripts/train.py -m resume={sweep_dir}")
    return jobs


class SweepSummary(Callback):
    """Hydra callback (conf/train.yaml, hydra.callbacks): the summary of the sweep when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            summarize(sweep_dir, config.get("optimized_metric"))
