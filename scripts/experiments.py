"""Run every recipe in conf/experiment/ over seeds 0-9 (one `scripts/train.py -m +experiment=NAME 'seed=range(10)'`
sweep each) and write the table into README.md between the `experiments` marker comments.

    python scripts/experiments.py                    # all recipes, table into README.md
    python scripts/experiments.py --only copy,mqar   # some of them (README.md is left alone)
    python scripts/experiments.py --no-docs          # print and save the table only
    python scripts/experiments.py --out outputs/experiments/2026-12-01_07-00-00   # go on with a stopped run
    python scripts/experiments.py --out outputs/experiments/2026-12-01_07-00-00 --read-only   # its table so far

The seeds of a recipe run as stacked models (hydra/launcher=stacked, a group per core) where that launcher is
installed, else (or with --launcher joblib) as joblib jobs, two at a time (one per core of the machine the figures
come from), at nice 10 so that a shared machine stays usable. Sweeps go to
outputs/experiments/<date>_<time>/<recipe>/, with the table as results.md and every job's figures as results.json
beside them. With --out, a recipe whose directory there already holds all its seeds' metrics.json is read rather
than trained again (delete the directory to retrain it); the others are run. --read-only trains and writes nothing:
it prints the table of what --out holds. README.md's table is replaced only by one in which every recipe has all its
seeds' runs (a failed seed counts: it ran); else it is left as it is and the script exits 1.

Per recipe: seeds solved (final val/seq_acc >= 0.99 in metrics.json: the model the run ends with, not a passing
moment), seeds aligned (final align/best >= 0.9; 0.95 for the <task>_supervised recipes), the first validation
step with val/seq_acc >= 0.99 (median [min-max] over the seeds that reached it), final align/best (median [min]),
wall time per seed (a job's own, from its job.json; stacked: the sweep's shared out over its seeds) and for the
whole sweep, and CPU time per seed, which judges the task's time budget. A recipe holds over seeds when 9 of 10 are
solved and, where the task has a target, 9 of 10 aligned. Training is seeded and deterministic on the CPU, so two
runs of the script agree on every count and step; wall times move with the load.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from attnlab import pages, tags

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "conf" / "experiment"
PAGE = ROOT / "README.md"  # the page whose table is replaced
MARKERS = "experiments"  # the table goes between <!-- experiments:start --> and <!-- experiments:end -->
SEEDS = 10
SOLVED = 0.99
ALIGNED, ALIGNED_SUPERVISED = 0.9, 0.95
HOLDS = 9  # of SEEDS: what a recipe must reach to count as one that holds across seeds
# Seconds per seed on 2 CPU cores, by task: the budget a recipe is held to.
BUDGET = {"copy": 60, "reverse": 60, "sort": 60, "histogram": 60, "majority": 60,
          "induction": 180, "mqar": 180, "selective_copy": 180, "modular_addition": 600}
JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]


def launcher() -> list[str]:
    """hydra/launcher=stacked where it composes and its launcher class imports, else joblib with two workers."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class

    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=["hydra/launcher=stacked"], return_hydra_config=True)
        get_class(cfg.hydra.launcher._target_)
    except Exception:  # not installed (yet), or broken: the seeds run as separate jobs
        return JOBLIB
    return ["hydra/launcher=stacked"]


def supervised(name: str) -> bool:
    """Whether the recipe trains with attention supervision (loss.attention > 0)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"+experiment={name}"])
    return float(cfg.get("loss", {}).get("attention", 0) or 0) > 0


def sweep(name: str, out: Path, how: list[str]) -> dict:
    """Seeds 0 .. SEEDS-1 of one recipe into out/name; returns {"wall_s": the sweep's wall time, "cpu_s": the CPU time
    of its processes} (from out/name/wall.json where an earlier run of this script finished it)."""
    record = out / name / "wall.json"
    if record.is_file() and len(list((out / name).glob("*/metrics.json"))) == SEEDS:
        print(f"== {name}: finished in {out / name}, read as it is", flush=True)
        return json.loads(record.read_text())
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), "-m", f"+experiment={name}",
               f"seed=range({SEEDS})", *how, f"hydra.sweep.dir={out / name}", "logging.progress_bar=false"]
    print(f"== {name}: {' '.join(command[1:])}", flush=True)
    start, used = time.perf_counter(), cpu_of_children()
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, preexec_fn=lambda: os.nice(10))
    times = {"wall_s": time.perf_counter() - start, "cpu_s": cpu_of_children() - used, "launcher": " ".join(how)}
    if finished.returncode != 0:
        print(finished.stderr[-3000:], file=sys.stderr)
    record.write_text(json.dumps(times) + "\n")
    return times


def cpu_of_children() -> float:
    """User + system CPU seconds of the finished child processes (and the descendants they waited for): unlike wall
    time, about the same on a busy machine as on an idle one."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def job(job_dir: Path) -> dict:
    """One seed's figures: final metrics, the step it was first solved at, its wall time."""
    record = json.loads((job_dir / "job.json").read_text()) if (job_dir / "job.json").is_file() else {}
    if not (job_dir / "metrics.json").is_file():
        return {"seed": None, "error": record.get("error") or "no metrics.json", "wall_s": record.get("wall_s")}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
    metrics = json.loads((job_dir / "metrics.json").read_text())
    val = EventAccumulator(str(job_dir), size_guidance={"scalars": 0}).Reload().Scalars(tags.metric("val", "seq_acc"))
    solved = next((e.step for e in val if e.value >= SOLVED), None)
    return {
        "seed": cfg.seed,
        "steps": val[-1].step if val else 0,
        "solved_step": solved,
        "seq_acc": metrics[tags.metric("val", "seq_acc")],
        "align": metrics.get(tags.ALIGN_BEST),
        "wall_s": record.get("wall_s"),
    }


def recipe(name: str, sweep_dir: Path, times: dict, stacked: bool) -> dict:
    jobs = sorted((job(d) for d in sweep_dir.iterdir() if d.is_dir() and (d / ".hydra").is_dir()),
                  key=lambda j: (j["seed"] is None, j["seed"]))
    configs = sorted(sweep_dir.glob("*/.hydra/config.yaml"))
    if not configs:  # the sweep itself failed (its stderr was printed)
        configs = [None]
    cfg = OmegaConf.load(configs[0]) if configs[0] else OmegaConf.create(
        {"data": {"task": name}, "model": {"layers": "?", "heads": "?", "dim": "?", "mlp": False}})
    m = cfg.model
    return {
        "recipe": name,
        "task": cfg.data.task,
        "model": f"{m.layers}/{m.heads}/{m.dim}" + (" +mlp" if m.mlp else "") + (" +norm" if m.get("norm") else ""),
        "supervised": bool(cfg.get("loss", {}).get("attention", 0)),
        "sweep_wall_s": times["wall_s"],
        "cpu_per_seed_s": times["cpu_s"] / SEEDS if "cpu_s" in times else None,
        "stacked": stacked,
        "jobs": jobs,
    }


def median_range(values: list[float], fmt: str, low_only: bool = False) -> str:
    if not values:
        return "–"
    low = f"{min(values):{fmt}}"
    return f"{statistics.median(values):{fmt}} [{low}]" if low_only else \
        f"{statistics.median(values):{fmt}} [{low}–{max(values):{fmt}}]"


def row(r: dict) -> str:
    if r.get("not_run"):
        return f"| `{r['recipe']}` | not run | | | | | | | | | **no** |"
    done = [j for j in r["jobs"] if j["seed"] is not None]
    threshold = ALIGNED_SUPERVISED if r["supervised"] else ALIGNED
    solved = sum(j["seq_acc"] >= SOLVED for j in done)
    aligns = [j["align"] for j in done if j["align"] is not None]
    has_target = bool(aligns)
    aligned = sum(a >= threshold for a in aligns)
    # A seed's cost: its job's own wall time when the seeds ran as jobs side by side; when they trained as one
    # stacked model (each member's job.json holds the group's time), the sweep's time shared out over them.
    walls = [j["wall_s"] for j in done if j["wall_s"] is not None]
    per_seed = r["sweep_wall_s"] / SEEDS if r["stacked"] else statistics.median(walls) if walls else float("nan")
    holds = solved >= HOLDS and (not has_target or aligned >= HOLDS)
    # The budget is a seed's wall time on an idle 2-core machine, where one single-threaded seed takes about its CPU
    # time: judged by CPU time, which a busy machine inflates much less than wall time.
    budget, cpu = BUDGET.get(r["task"]), r.get("cpu_per_seed_s")
    in_budget = "?" if cpu is None or budget is None else "yes" if cpu <= budget else "**no**"
    failed = SEEDS - len(done)
    return " | ".join([
        f"| `{r['recipe']}`", r["model"] + (" +att.sup" if r["supervised"] else ""),
        f"{solved}/{SEEDS}" + (f" ({failed} failed)" if failed else ""),
        f"{aligned}/{SEEDS} (≥ {threshold:g})" if has_target else "no target",
        median_range([j["solved_step"] for j in done if j["solved_step"] is not None], ".0f"),
        median_range(aligns, ".2f", low_only=True) if has_target else "–",
        f"{per_seed:.0f}" + (" (stacked)" if r["stacked"] else ""), f"{r['sweep_wall_s']:.0f}", "–" if cpu is None else f"{cpu:.0f}",
        f"{in_budget} (≤ {budget})", ("yes" if holds else "**no**") + " |",
    ])


def table(results: list[dict]) -> str:
    lines = [
        "| recipe | layers/heads/dim | solved | aligned | solved at step, median [min–max] | align/best, median "
        "[min] | wall per seed (s) | wall, 10 seeds (s) | CPU per seed (s) | within budget | holds over seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    total = sum(r.get("sweep_wall_s", 0) for r in results)
    return "\n".join(lines + [row(r) for r in results]) + f"\n\nWhole table: {total / 60:.1f} min."


def machine(results: list[dict], read_only: bool) -> str:
    """The line above the table: where and how its figures were measured, and how the seeds ran (said per row,
    in the wall-per-seed column, only where the rows differ)."""
    import torch

    load = "tabled from the runs --out holds" if read_only else f"load average {os.getloadavg()[0]:.1f}"
    stacked = {r["stacked"] for r in results if not r.get("not_run")}
    how = ("as `hydra/launcher=stacked` models, a group per core" if stacked == {True}
           else f"as `{' '.join(JOBLIB)}` jobs" if stacked <= {False}
           else "as `hydra/launcher=stacked` models (a group per core) where the wall per seed says (stacked), "
           f"else as `{' '.join(JOBLIB)}` jobs")
    return (f"{datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPU cores "
            f"({platform.processor() or platform.machine()}), torch {torch.__version__}, seeds 0-{SEEDS - 1} "
            f"{how}, {load}")


def incomplete(results: list[dict]) -> list[str]:
    """The recipes of the table without a run for each of their seeds (a failed run counts: it is there)."""
    return [r["recipe"] for r in results if r.get("not_run") or len(r["jobs"]) < SEEDS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated recipe names (default: all in conf/experiment/)")
    parser.add_argument("--no-docs", action="store_true", help=f"do not write the table into {PAGE.relative_to(ROOT)}")
    parser.add_argument("--launcher", choices=("auto", "stacked", "joblib"), default="auto",
                        help="auto (default): stacked where it composes, else joblib")
    parser.add_argument("--read-only", action="store_true",
                        help="train and write nothing: print the table of what --out holds (recipes not run there: 'not run')")
    parser.add_argument("--out", type=Path,
                        help="the directory to run in (default: a new one under outputs/experiments)")
    args = parser.parse_args()
    names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    if args.only:
        unknown = set(args.only.split(",")) - set(names)
        if unknown:
            print(f"error: --only: no recipe {', '.join(sorted(unknown))} in conf/experiment/ "
                  f"(have: {', '.join(names)})", file=sys.stderr)
            sys.exit(2)
        names = [n for n in names if n in args.only.split(",")]
    if args.read_only and (args.out is None or not args.out.is_dir()):
        print("error: --read-only: needs --out DIR, the directory of an earlier run of this script (allowed: an "
              f"existing directory such as outputs/experiments/<date>_<time>; got {args.out})", file=sys.stderr)
        sys.exit(2)
    out = (args.out or ROOT / "outputs" / "experiments" / f"{datetime.now():%Y-%m-%d_%H-%M-%S}").resolve()
    if not args.read_only:
        out.mkdir(parents=True, exist_ok=True)
    how = {"auto": launcher, "stacked": lambda: ["hydra/launcher=stacked"], "joblib": lambda: JOBLIB}[args.launcher]()
    results = []
    for name in names:
        # The stacked launcher trains a supervised job alone (the attention loss needs the weights' explicit path),
        # one after another: such recipes run as joblib jobs, two at a time.
        used = JOBLIB if supervised(name) else how
        if args.read_only:
            if not (out / name / "wall.json").is_file():
                results.append({"recipe": name, "not_run": True})
                continue
            times = json.loads((out / name / "wall.json").read_text())
            stacked = times.get("launcher", " ".join(used)) != " ".join(JOBLIB)
            results.append(recipe(name, out / name, times, stacked))
            continue
        times = sweep(name, out, used)
        results.append(recipe(name, out / name, times, times.get("launcher", " ".join(used)) != " ".join(JOBLIB)))
    where = machine(results, args.read_only)
    text = f"Measured {where}, by `python scripts/experiments.py`:\n\n{table(results)}\n"
    print("\n" + text)
    if args.read_only:  # a table to read, nothing written
        return
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"machine": where, "results": results}, indent=2) + "\n")
    if not args.no_docs and not args.only:
        write_page(text, results)


def write_page(text: str, results: list[dict]) -> None:
    """The table into PAGE between its markers; never one with recipes whose runs are not all there."""
    pages.check(PAGE, MARKERS)
    if missing := incomplete(results):
        print(f"{PAGE} left as it is: {', '.join(missing)} lack runs of some of seeds 0-{SEEDS - 1}",
              file=sys.stderr)
        sys.exit(1)
    pages.write(PAGE, MARKERS, text)


if __name__ == "__main__":
    main()
