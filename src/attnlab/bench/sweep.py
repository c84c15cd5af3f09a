"""5. A sweep of short jobs under Hydra's basic launcher vs the joblib launcher with 2 workers (n_jobs=2): 8 jobs
(throughput), and 2 (as many jobs as workers: start-up bound), beside the machine's own 2-process scaling."""

import statistics
import subprocess
import sys
import tempfile

from attnlab.bench.harness import TRAIN, Report, Sizes, launch, rounds_of, say, table


def joblib_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is not None


def usage(runs: list[tuple[float, float]]) -> tuple[str, str, str]:
    """Median seconds, median CPU seconds, and cores used (CPU s / s) of (seconds, CPU seconds) rounds."""
    seconds, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    return f"{seconds:.1f}", f"{cpu:.1f}", f"{cpu / seconds:.2f}"


# The machine's own scaling, for comparison: the same single-thread torch work in one process, and split over two
# processes side by side. No parallel launcher can do better than that (1.8x, not 2x, here).
TORCH_WORK = """
import sys, time, torch
torch.set_num_threads(1)
x, w = torch.randn(128, 128), torch.randn(128, 128, requires_grad=True)
start, cpu = time.perf_counter(), time.process_time()
for _ in range(int(sys.argv[1])):
    (x @ w).tanh().sum().backward()
print(start, time.perf_counter(), time.process_time() - cpu)
"""


SWEEP_WORKERS = 2  # joblib's n_jobs in the sweep comparison: one per core here


def torch_work(processes: int, iterations: int) -> tuple[float, float, float]:
    """`iterations` of TORCH_WORK split over `processes` processes at once: the window from the first one's start
    to the last one's end, and their CPU seconds, both after the import of torch."""
    command = [sys.executable, "-c", TORCH_WORK, str(iterations // processes)]
    running = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    windows = [tuple(map(float, p.communicate()[0].split())) for p in running]
    if any(p.returncode for p in running):
        raise SystemExit("error: the torch work of the scaling reference failed")
    return min(w[0] for w in windows), max(w[1] for w in windows), sum(w[2] for w in windows)


def measure(sizes: Sizes, report: Report) -> None:
    if not joblib_available():
        report.notes.append("Sweep throughput skipped: hydra-joblib-launcher is not installed.")
        what = f"sweep: joblib launcher (n_jobs={SWEEP_WORKERS}) / basic launcher, throughput"
        report.target(what, "skipped", ">= 1.6x", None)
        return
    say(f"sweep: {sizes.sweep_rounds} rounds of torch work in 1 process and split over {SWEEP_WORKERS}, interleaved")
    one, two = rounds_of(
        lambda: torch_work(1, sizes.scaling_iterations), lambda: torch_work(SWEEP_WORKERS, sizes.scaling_iterations),
        rounds=sizes.sweep_rounds,
    )
    scaling = statistics.median(o[0] / t[0] for o, t in zip(one, two))
    report.target(
        f"the machine: the same torch work split over {SWEEP_WORKERS} processes / in 1, throughput (a bound for parallel "
        "launchers)",
        f"{scaling:.2f}x", "-", None,
    )
    rows = [
        ("-", "-", "reference: torch work in 1 process", *usage(one)),
        ("-", "-", f"the same split over {SWEEP_WORKERS} processes", *usage(two)),
        ("-", "-", f"**the machine's own scaling** (1 process s / {SWEEP_WORKERS} processes s)", f"**{scaling:.2f}x**",
         "rounds: " + ", ".join(f"{o[0] / t[0]:.2f}" for o, t in zip(one, two)), ""),
    ]  # fmt: skip
    for jobs, steps in sizes.sweep_jobs:
        common = ["-m", f"seed=range(0,{jobs})", "logging=off", "trainer.stop_at=null", f"trainer.max_steps={steps}"]

        def sweep(launcher: list[str]) -> tuple[float, float, float]:
            with tempfile.TemporaryDirectory() as tmp:
                return launch([sys.executable, str(TRAIN), *common, *launcher, f"hydra.sweep.dir={tmp}"])

        say(f"sweep: {sizes.sweep_rounds} rounds of {jobs} jobs x {steps} steps, basic and joblib interleaved")
        basic, joblib = rounds_of(
            lambda: sweep([]), lambda: sweep(["hydra/launcher=joblib", f"hydra.launcher.n_jobs={SWEEP_WORKERS}"]),
            rounds=sizes.sweep_rounds,
        )
        speedup = statistics.median(b[0] / j[0] for b, j in zip(basic, joblib))
        # As many jobs as workers: each launcher imports torch and Lightning once in wall time, so the ratio is
        # bounded by (start + import + 2 jobs) / (start + import + 1 job), not a measure of the launcher.
        bound = jobs <= SWEEP_WORKERS
        report.target(
            f"{jobs} jobs of {steps} steps: joblib launcher (n_jobs={SWEEP_WORKERS}) / basic launcher, throughput"
            + (" (as many jobs as workers: start-up bound)" if bound else ""),
            f"{speedup:.2f}x", "-" if bound else ">= 1.6x", None if bound else speedup >= 1.6,
        )
        rows += [
            (jobs, steps, "basic (jobs one after another)", *usage(basic)),
            (jobs, steps, f"joblib, {SWEEP_WORKERS} workers", *usage(joblib)),
            (jobs, steps, "**throughput ratio** (basic s / joblib s)", f"**{speedup:.2f}x**",
             "rounds: " + ", ".join(f"{b[0] / j[0]:.2f}" for b, j in zip(basic, joblib)), ""),
        ]  # fmt: skip
    report.details.append(
        "### 5. Sweep throughput\n\n"
        "`python scripts/train.py -m 'seed=range(0,JOBS)' logging=off trainer.stop_at=null trainer.max_steps=STEPS`, "
        "whole command, with the basic launcher and with "
        f"`hydra/launcher=joblib hydra.launcher.n_jobs={SWEEP_WORKERS}`; "
        f"{sizes.sweep_rounds} rounds, the two commands of a round interleaved as in section 1 (each with its "
        "workers), medians of the rounds. CPU s: what the command and its processes used; CPU s / s is how many "
        "cores the sweep actually got. Each launcher's process (basic) or worker (joblib) imports torch and "
        "Lightning once, then runs job after job. So with as many jobs as workers the ratio is at most (start + "
        "import + 2 jobs) / (start + import + 1 job), ~1.5 for jobs of 1000 steps (~5 s each, ~5 s of start-up); "
        "with more jobs the start-up is paid once for all of them, and the ratio nears what the machine itself gives "
        "two processes at once: the reference rows, single-thread torch work (a 128x128 matmul, tanh and backward, "
        "repeated) in one process and split over two.\n\n"
        + table(["jobs", "steps per job", "launcher", "seconds", "CPU s", "cores used (CPU s / s)"], rows)
    )

