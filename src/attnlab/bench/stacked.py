"""7. Stacked sweeps (hydra/launcher=stacked): whole sweep commands against the basic and joblib launchers, one
group's training steps against the same model at one big batch, and peak memory."""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from attnlab import stacked
from attnlab.bench.harness import ROOT, TRAIN, Report, Sizes, config, launch, quiet, rounds_of, say, table
from attnlab.bench.loop import StepTimer, framework_window
from attnlab.bench.sweep import SWEEP_WORKERS, joblib_available, usage

STACKED = ["hydra/launcher=stacked"]  # hydra.launcher.n_jobs by default: the cores / a group's threads (1)
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
# Every group in the sweep's own process, one after another (as the launcher trained before it had workers).
STACKED_ONE_PROCESS = STACKED + ["hydra.launcher.n_jobs=1"]
# Small members: a quarter of the width, an eighth of the batch.
SMALL = ["model.dim=16", "data.batch_size=16"]


def sweep_command(jobs: int, steps: int, launcher: list[str], extra: list[str] = ()) -> list[str]:
    return [sys.executable, str(TRAIN), "-m", f"seed=range(0,{jobs})", "trainer.stop_at=null",
            f"trainer.max_steps={steps}", *extra, *launcher]


def sweep_side(jobs: int, steps: int, launcher: list[str], extra: list[str] = ()):
    def side() -> tuple[float, float, float]:
        with tempfile.TemporaryDirectory() as tmp:
            return launch(sweep_command(jobs, steps, launcher, extra) + [f"hydra.sweep.dir={tmp}"])

    return side


def group_window(members: int, steps: int, skip: int, threads: int) -> tuple[float, float, float]:
    """One stacked group's training steps (logging off), K members of the default size, timed from step `skip`."""
    torch.set_num_threads(threads)
    cfgs = [config(["logging=off", "trainer.stop_at=null", f"trainer.max_steps={steps}", f"seed={k}"]) for k in range(members)]
    timer = StepTimer(skip, steps)
    with tempfile.TemporaryDirectory() as tmp, quiet():
        stacked.train_group(cfgs, [Path(tmp) / str(k) for k in range(members)], extra_callbacks=[timer])
    return timer.window()


def big_batch_window(batch: int, steps: int, skip: int, threads: int) -> tuple[float, float, float]:
    torch.set_num_threads(threads)
    cfg = config(["logging=off", "trainer.stop_at=null", f"trainer.max_steps={steps}", f"data.batch_size={batch}"])
    return framework_window(cfg, skip)


def tree_rss(root: int, page: int) -> int:
    """Resident bytes of process `root` and all its descendants now, from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError):  # ended while being read
            continue
    tree, grown = {root}, True
    while grown:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grown = bool(more)
    total = 0
    for pid in tree:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    return total


def peak_memory_mb(command: list[str]) -> tuple[float, float]:
    """Peak resident memory of `command`, MB: its largest process (the kernel's account of the process and those it
    waited for: wait4) and all its processes at once (the sweep's and its workers', sampled every 50 ms)."""
    page, peak = os.sysconf("SC_PAGE_SIZE"), 0
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, tree_rss(process.pid, page))
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            log.seek(0)
            raise SystemExit(f"error: {' '.join(command)} failed:\n{log.read()[-3000:]}")
    return usage.ru_maxrss / 1024, peak / 2**20


def measure(sizes: Sizes, report: Report) -> None:
    jobs, steps = sizes.stacked_jobs
    rows = []
    default, one = "stacked", "stacked, n_jobs=1"
    # 1. The default config, 8 seeds: whole commands, the launchers interleaved.
    sides = {"basic (jobs one after another)": sweep_side(jobs, steps, []), default: sweep_side(jobs, steps, STACKED),
             one: sweep_side(jobs, steps, STACKED_ONE_PROCESS)}
    if joblib_available():
        joblib = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={SWEEP_WORKERS}"]
        sides[f"joblib, {SWEEP_WORKERS} workers"] = sweep_side(jobs, steps, joblib)
    say(f"stacked: {sizes.stacked_rounds} rounds of {jobs} seeds x {steps} steps (default logging), "
        f"{', '.join(sides)} interleaved")
    results = dict(zip(sides, rounds_of(*sides.values(), rounds=sizes.stacked_rounds)))
    basic = results["basic (jobs one after another)"]
    for name, runs in results.items():
        rows.append((jobs, steps, "default", name, *usage(runs)))
    say("stacked: " + ", ".join(f"{name} {statistics.median(r[0] for r in runs):.1f} s" for name, runs in results.items()))
    joblib_name = f"joblib, {SWEEP_WORKERS} workers"
    for name in (default, one):
        group = results[name]
        over_basic = statistics.median(b[0] / g[0] for b, g in zip(basic, group))
        report.target(f"{jobs} seeds x {steps} steps, default config, whole sweep: {name} / basic launcher, throughput",
                      f"{over_basic:.2f}x", ">= 2x" if name == default else "-",
                      over_basic >= 2 if name == default else None)
        rows.append((jobs, steps, "default", f"**{name} / basic**", f"**{over_basic:.2f}x**",
                     "rounds: " + ", ".join(f"{b[0] / g[0]:.2f}" for b, g in zip(basic, group)), ""))
        if joblib_name in results:
            over_joblib = statistics.median(j[0] / g[0] for j, g in zip(results[joblib_name], group))
            report.target(f"{jobs} seeds x {steps} steps, default config, whole sweep: {name} / joblib (n_jobs="
                          f"{SWEEP_WORKERS}), throughput", f"{over_joblib:.2f}x",
                          ">= 1.2x" if name == default else "-", over_joblib >= 1.2 if name == default else None)
            rows.append((jobs, steps, "default", f"**{name} / joblib**", f"**{over_joblib:.2f}x**",
                         "rounds: " + ", ".join(f"{j[0] / g[0]:.2f}" for j, g in zip(results[joblib_name], group)), ""))

    # 2. Small members, 32 seeds: stacked against the basic launcher.
    small_jobs = sizes.stacked_small_jobs
    say(f"stacked: {sizes.stacked_rounds} rounds of {small_jobs} small seeds x {steps} steps, basic and stacked "
        "(n_jobs default and 1) interleaved")
    basic, *groups = rounds_of(sweep_side(small_jobs, steps, [], SMALL), sweep_side(small_jobs, steps, STACKED, SMALL),
                               sweep_side(small_jobs, steps, STACKED_ONE_PROCESS, SMALL), rounds=sizes.stacked_rounds)
    rows.append((small_jobs, steps, "small", "basic", *usage(basic)))
    for name, group in zip((default, one), groups):
        small = statistics.median(b[0] / g[0] for b, g in zip(basic, group))
        say(f"stacked: small members, basic / {name} {small:.2f}x")
        report.target(f"{small_jobs} small seeds ({' '.join(SMALL)}) x {steps} steps, whole sweep: {name} / basic",
                      f"{small:.2f}x", ">= 4x" if name == default else "-", small >= 4 if name == default else None)
        rows += [(small_jobs, steps, "small", name, *usage(group)),
                 (small_jobs, steps, "small", f"**{name} / basic**", f"**{small:.2f}x**",
                  "rounds: " + ", ".join(f"{b[0] / g[0]:.2f}" for b, g in zip(basic, group)), "")]

    # 3. One group's steps against one model at the group's whole batch, on the same threads.
    members, group_steps, skip = sizes.stacked_members, sizes.stacked_steps, sizes.warmup_steps
    step_rows = []
    for threads in sorted({1, torch.get_num_threads(), CORES}):
        say(f"stacked: {sizes.stacked_rounds} rounds of a {members}-member group vs batch {members * 128}, {threads} threads")
        group, big = rounds_of(lambda: group_window(members, group_steps, skip, threads),
                               lambda: big_batch_window(members * 128, group_steps, skip, threads), rounds=sizes.stacked_rounds)
        share = statistics.median(b[0] / g[0] for g, b in zip(group, big))  # same examples per step: time ratio
        say(f"stacked: {threads} threads, group / big batch {share:.0%}")
        step_rows.append((threads, f"{(group_steps - skip) / statistics.median(g[0] for g in group):.1f}",
                          f"{(group_steps - skip) / statistics.median(b[0] for b in big):.1f}", f"{share:.0%}"))
        report.target(f"one stacked group (K={members}, default size) / the model at batch {members * 128}, "
                      f"examples/s, {threads} thread(s)", f"{share:.0%}", ">= 90%", share >= 0.9)

    # 4. Peak resident memory of the stacked sweeps: the largest process and all of them at once (the workers'
    # imports and models are each their own).
    memory_rows = []
    for k in sizes.stacked_memory:
        for name, launcher in ((default, STACKED), (one, STACKED_ONE_PROCESS)):
            with tempfile.TemporaryDirectory() as tmp:
                largest, together = peak_memory_mb(sweep_command(k, sizes.stacked_memory_steps, launcher)
                                                   + [f"hydra.sweep.dir={tmp}"])
            memory_rows.append((k, name, f"{largest:.0f}", f"{together:.0f}"))
            report.target(f"peak resident memory, {name} sweep of {k} default-size seeds, all its processes",
                          f"{together:.0f} MB", "-", None)

    report.details.append(
        "### 7. Stacked sweeps\n\n"
        "Whole commands, `python scripts/train.py -m 'seed=range(0,JOBS)' trainer.stop_at=null "
        "trainer.max_steps=STEPS [LAUNCHER]` with the default logging, launcher by launcher: the basic one, "
        f"`hydra/launcher=joblib hydra.launcher.n_jobs={SWEEP_WORKERS}`, `hydra/launcher=stacked` (its default "
        f"`hydra.launcher.n_jobs`, here {CORES} workers, the sweep's process and {CORES - 1} more, a stacked group "
        "each; and `hydra.launcher.n_jobs=1`, every group in the sweep's own process); "
        f"{sizes.stacked_rounds} rounds interleaved as in section 1, medians. Small members: the same with "
        f"`{' '.join(SMALL)}`.\n\n"
        + table(["jobs", "steps per job", "size", "launcher", "seconds", "CPU s", "cores used (CPU s / s)"], rows)
        + f"\n\nOne group's training steps (attnlab.stacked.train_group, {members} members, logging off) against the "
        f"same model trained alone at batch {members}x128 (train.run), steps {skip}-{group_steps} timed, "
        f"{sizes.stacked_rounds} rounds interleaved; both see {members * 128} examples a step.\n\n"
        + table(["torch threads", "group steps/s", f"batch-{members * 128} steps/s", "group / big batch"], step_rows)
        + f"\n\nPeak resident memory of the stacked sweeps ({sizes.stacked_memory_steps} steps, default size): the "
        "largest process (the kernel's account, wait4) and all the sweep's processes at once (sampled every 50 ms "
        "from /proc):\n\n"
        + table(["members", "launcher", "largest process (MB)", "all processes (MB)"], memory_rows)
    )
