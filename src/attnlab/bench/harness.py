"""The bench's shared harness: its sizes, the report it fills, and how sides are run against each other.

The machine may be shared, and the speed of whole runs can drift by 15-40% within minutes, more than several of the
effects measured. So the sides of a comparison run interleaved (`interleaved`, `rounds_of`): at the same time,
each in processes of its own, taking turns of 50 ms on the machine, each timed by its own turns only; figures are
medians of such rounds. Timings in milliseconds in one process alternate instead (`alternate`, timeit's rule: each
side's best repeat).
"""

import contextlib
import io
import os
import platform
import re
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import lightning
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[3]
TRAIN = ROOT / "scripts" / "train.py"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"  # where the summary goes in its page
# One run's results in docs/bench.md and in the page, named by the sections it measured: a later run replaces the
# parts of the sections it measures again and keeps the others (each part says when and by which command).
PART, PART_END = "<!-- bench-part: {} -->", "<!-- bench-part-end -->"

# Commands are started with fork, not vfork: a side stopped between vfork and exec (interleaved's SIGSTOP) leaves
# its parent in the kernel waiting for the exec, where it cannot stop either, and interleaved waiting for it to stop
# (seen: a sweep side hung for 15 minutes). subprocess documents this switch.
subprocess._USE_VFORK = False


@dataclass
class Sizes:
    """How long each section runs. --quick shrinks everything to check the script, not to measure."""

    rounds: int = 7  # rounds per comparison (3 for the slow ones: the larger model, threads)
    loop_steps: int = 600
    loop_steps_larger: int = 60
    warmup_steps: int = 20  # steps not timed at the start of every run
    # 20 rounds of 600-step runs (~3 s each): even interleaved, a round's share varies by a few % on this shared
    # machine, so the median of many rounds, with their spread beside it.
    logging_steps: int = 600
    logging_rounds: int = 20
    startup_rounds: int = 3
    attention_dims: tuple = (64, 128, 256, 512)
    attention_lengths: tuple = (16, 64, 256, 1024)
    attention_tokens: int = 2048  # batch = tokens // seq_len
    attention_repeats: int = 3
    sweep_jobs: tuple = ((8, 1000), (2, 1000))  # (jobs, steps per job) of each sweep compared
    scaling_iterations: int = 40000  # the machine's own 2-process scaling (~14 s in one process)
    sweep_rounds: int = 3
    threads_steps: int = 100
    solve: bool = True
    # stacked sweeps (section 7): (seeds, steps) of the whole commands, the small members' seeds, one group's
    # members and steps against the big batch, the members of the memory runs and their steps
    stacked_jobs: tuple = (8, 1000)
    stacked_small_jobs: int = 32
    stacked_members: int = 8
    stacked_steps: int = 300
    stacked_memory: tuple = (8, 32)
    stacked_memory_steps: int = 200
    stacked_rounds: int = 2  # rounds of each whole-command comparison and of the group window (~20 min in all)


QUICK = Sizes(
    rounds=1, loop_steps=12, loop_steps_larger=8, warmup_steps=2, threads_steps=6, logging_steps=12, logging_rounds=1, startup_rounds=1,
    attention_dims=(64,), attention_lengths=(16, 32), attention_tokens=64, attention_repeats=1,
    sweep_jobs=((3, 2),), scaling_iterations=200, sweep_rounds=1, solve=False,
    stacked_jobs=(2, 4), stacked_small_jobs=2, stacked_members=2, stacked_steps=8, stacked_memory=(2,),
    stacked_memory_steps=4, stacked_rounds=1,
)  # fmt: skip


@dataclass
class Report:
    summary: list = field(default_factory=list)  # rows: what, measured, target, met
    details: list = field(default_factory=list)  # markdown blocks, one per section
    notes: list = field(default_factory=list)

    def target(self, what: str, measured: str, target: str, met: bool | None) -> None:
        self.summary.append((what, measured, target, {True: "yes", False: "**no**", None: "-"}[met]))


def table(header: list[str], rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def say(*args) -> None:
    print(*args, file=sys.stderr, flush=True)



@contextlib.contextmanager
def quiet():
    """Lightning's banner lines and progress bar go to a buffer, not into the benchmark's output."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def alternate(*sides, rounds: int) -> list[list]:
    """Each side `rounds` times in this process, in the order given in even rounds and reversed in odd ones (so no
    side always goes first); one list of results per side. For timings in milliseconds (the attention paths)."""
    results = [[] for _ in sides]
    for r in range(rounds):
        order = range(len(sides)) if r % 2 == 0 else reversed(range(len(sides)))
        for i in order:
            results[i].append(sides[i]())
    return results


def interleaved(*sides, turn: float = 0.05) -> list[tuple[float, ...]]:
    """Runs the sides at the same time, each in a process group of its own (forked), taking turns on the whole
    machine: one group runs for `turn` seconds while the others are stopped (SIGSTOP/SIGCONT). So every side meets
    the same load from everyone else on the machine, which runs one after another do not: here the speed of whole
    runs drifts by 15-40% within minutes, more than several of the effects measured. A side's own threads and
    subprocesses (a sweep's workers) run and stop with it.

    A side returns the window it times, (start, end, *more), start and end from time.perf_counter (one clock for
    all processes). The result, per side: (its running seconds inside its window, counting its own turns only,
    *more). Values in `more` must be measured by the side itself on clocks that stop with it (CPU time)."""
    pids, pipes = [], []
    sys.stdout.flush()  # buffered output is not written twice, by parent and child
    sys.stderr.flush()
    for side in sides:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: wait for its first turn, run, send its window back
            code = 1
            try:
                os.close(read)
                os.setpgid(0, 0)
                os.kill(os.getpid(), signal.SIGSTOP)
                window = side()
                os.write(write, struct.pack(f"{len(window)}d", *window))
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(write)
        pids.append(pid)
        pipes.append(read)
    turns = [[] for _ in sides]
    running = list(range(len(sides)))
    try:
        for pid in pids:
            os.waitpid(pid, os.WUNTRACED)  # each stopped, ready
        while running:
            for i in list(running):
                begin = time.perf_counter()
                os.killpg(pids[i], signal.SIGCONT)
                time.sleep(turn)
                os.killpg(pids[i], signal.SIGSTOP)  # an ended child stays a zombie until waited for: no error
                _, status = os.waitpid(pids[i], os.WUNTRACED)  # stopped, or ended in its turn
                turns[i].append((begin, time.perf_counter()))
                if not os.WIFSTOPPED(status):
                    running.remove(i)
                    with contextlib.suppress(ProcessLookupError):  # what it left behind (idle workers) goes on
                        os.killpg(pids[i], signal.SIGCONT)
                    if os.waitstatus_to_exitcode(status) != 0:
                        raise RuntimeError(f"bench side {i} failed (its traceback is above)")
    finally:  # on an error or Ctrl+C, no side is left stopped
        for i in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pids[i], signal.SIGKILL)
            os.waitpid(pids[i], 0)
    results = []
    for read, own in zip(pipes, turns):
        with os.fdopen(read, "rb") as pipe:
            data = pipe.read()
        start, end, *more = struct.unpack(f"{len(data) // 8}d", data)
        results.append((sum(max(0.0, min(b, end) - max(a, start)) for a, b in own), *more))
    return results


def rounds_of(*sides, rounds: int) -> list[list[tuple[float, ...]]]:
    """`rounds` interleaved runs of all sides (the first turn goes to each side in turn); one list per side."""
    results = [[] for _ in sides]
    for r in range(rounds):
        order = [(r + k) % len(sides) for k in range(len(sides))]
        for i, result in zip(order, interleaved(*[sides[i] for i in order])):
            results[i].append(result)
    return results


def launch(command: list[str]) -> tuple[float, float, float]:
    """Runs a command to its end: the window (start, end) on time.perf_counter, and the CPU seconds of it and the
    processes it waited for. Output goes to a file, not a pipe: a pipe would also wait for processes it leaves
    behind (joblib's idle workers)."""
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        end = time.perf_counter()
        if done.returncode:
            log.seek(0)
            raise SystemExit(f"error: {' '.join(command)} failed:\n{log.read()[-3000:]}")
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return start, end, (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)


def first_step_time(run_dir: Path) -> float:
    """Wall-clock time of the first training-step event in a run's TensorBoard files: the learning rate, which
    LearningRateMonitor writes at the start of a step, or train/* written at its end, whichever is earlier."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    times = []
    for events in run_dir.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events.parent))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            if tag.startswith(("lr-", "train/")):
                times += [e.wall_time for e in accumulator.Scalars(tag)]
    if not times:
        raise RuntimeError(f"no training-step scalar in {run_dir}")
    return min(times)



def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cores} CPU cores ({cpu}), no GPU used; torch {torch.__version__} (intra-op threads: {torch.get_num_threads()}"
        f"), lightning {lightning.__version__}, Python {platform.python_version()}"
    )


def render(report: Report, quick: bool, load: tuple[float, float], command: str) -> tuple[str, str]:
    """(the full report, this run's part of docs/bench.md; the summary, its part of docs/performance.md's)"""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    head = (
        f"Measured {when} with `{command}`{' (QUICK: tiny sizes, not a measurement)' if quick else ''}.\n\n"
        f"Machine: {machine()}. Load average {load[0]:.1f} at the start, {load[1]:.1f} at the end "
        f"({'shared with other work: absolute times are noisy, ratios less so' if max(load) > 1.5 else 'mostly idle'}). "
        "GPU figures: not measured (no GPU on this machine).\n\n"
        + table(["what", "measured", "target (2 CPU cores)", "met"], report.summary)
    )
    notes = "".join(f"\n\n{n}" for n in report.notes)
    full = head + notes + "\n\n" + "\n\n".join(report.details)
    return full, head + notes


def merge_parts(text: str, part: str, sections: list[str], order: list[str]) -> str:
    """The parts in `text`, with `part` (measuring `sections`) in place of those that measured any of them; in
    the order of their first section. Text without parts (an older report) is replaced."""
    found = re.findall(PART.format(r"([\w,]+)") + r"\n(.*?)\n" + re.escape(PART_END), text, flags=re.S)
    parts = [(names.split(","), body) for names, body in found if not set(names.split(",")) & set(sections)]
    parts.append((sections, part))
    parts.sort(key=lambda named: order.index(named[0][0]))
    return "\n\n".join(f"{PART.format(','.join(names))}\n{body}\n{PART_END}" for names, body in parts)


def write_report(out: Path, full: str, sections: list[str], order: list[str]) -> None:
    """docs/bench.md (or --out): its parts, this run's among them."""
    old = out.read_text() if out.is_file() else ""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Benchmark\n\n" + merge_parts(old, full, sections, order) + "\n")


def update_page(page: Path, summary: str, sections: list[str], order: list[str]) -> None:
    """This run's summary among the page's parts between its bench markers, the rest of the page as it was."""
    text = page.read_text()
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"error: {page} has no {START} ... {END} markers to put the results between")
    block = merge_parts(text[start + len(START) : end], summary, sections, order)
    page.write_text(text[: start + len(START)] + "\n" + block + "\n" + text[end:])
