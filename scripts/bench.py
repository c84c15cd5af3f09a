"""How fast is attnlab? Measures, side by side in one run, and writes one report (docs/bench.md, and the summary
into docs/performance.md between the bench markers):

1. loop       framework (train.run, logging off) vs a hand-written PyTorch loop: steps/s, same model, batches,
              optimiser and device, at the default size and a larger one
1b. threads   the hand-written loop with device.threads (1) vs torch's default, one thread per core
2. logging    the default TensorBoard logging (scalars, attention maps, weight images and histograms, progress
              bar) as a share of a run's wall time, against logging=off
3. startup    launching scripts/train.py to its first training step, vs a bare `import lightning.pytorch`
4. attention  the article's explicit steps vs F.scaled_dot_product_attention, forward + backward, outputs and
              gradients checked equal
5. sweep      a sweep of short jobs under Hydra's basic launcher vs the joblib launcher with 2 workers (n_jobs=2):
              8 jobs (throughput), and 2 (as many jobs as workers: start-up bound)
6. solve      the default config (a user's `python scripts/train.py`) until val/seq_acc >= 0.99

    python scripts/bench.py                    # everything (~15 min on 2 CPU cores); writes docs/bench.md, performance.md
    python scripts/bench.py --sections loop,startup
    python scripts/bench.py --quick --out /tmp/bench.md --readme none   # tiny sizes: checks the script runs

The machine may be shared, and here the speed of whole runs drifts by 15-40% within minutes. So the sides of a
comparison run interleaved: at the same time, each in processes of its own, taking turns of 50 ms on the machine
(`interleaved`), each timed by its own turns only; figures are medians of such rounds. The attention paths, timed
in this process in milliseconds, alternate and take each side's best repeat instead (timeit's rule).
"""

import argparse
import contextlib
import io
import os
import platform
import resource
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import lightning
import lightning.pytorch as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import Tensor

from attnlab.attention import SelfAttention
from attnlab.data import Batches
from attnlab.module import loss as masked_loss
from attnlab.train import build, run

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "scripts" / "train.py"
SECTIONS = ("loop", "threads", "logging", "startup", "attention", "sweep", "solve")
README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"

# The larger model of the loop comparison: 4x the width, 4 heads, 2 layers, sequences twice as long.
LARGER = ["model.dim=128", "model.heads=4", "model.layers=2", "data.seq_len=16"]


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


QUICK = Sizes(
    rounds=1, loop_steps=12, loop_steps_larger=8, warmup_steps=2, threads_steps=6, logging_steps=12, logging_rounds=1, startup_rounds=1,
    attention_dims=(64,), attention_lengths=(16, 32), attention_tokens=64, attention_repeats=1,
    sweep_jobs=((3, 2),), scaling_iterations=200, sweep_rounds=1, solve=False,
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


# ---------------------------------------------------------------------------------------------------------------
# 1. framework vs hand-written loop


class StepTimer(L.Callback):
    """The window from the start of training step `skip` to the end of step `last`: (start, end, CPU seconds). The
    clocks are read at those two steps only: reading the process CPU clock is a system call (~0.1 ms in a VM),
    which timing every step would add to the framework's side alone."""

    def __init__(self, skip: int, last: int):
        self.skip, self.last, self.start, self.end = skip, last, None, None

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.skip:
            self.start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.last:
            self.end = (time.perf_counter(), time.process_time())

    def window(self) -> tuple[float, float, float]:
        return self.start[0], self.end[0], self.end[1] - self.start[1]


def framework_window(cfg: DictConfig, skip: int) -> tuple[float, float, float]:
    timer = StepTimer(skip, cfg.trainer.max_steps)
    with tempfile.TemporaryDirectory() as run_dir, quiet():
        run(cfg, Path(run_dir), extra_callbacks=[timer])
    return timer.window()


def hand_written_window(cfg: DictConfig, skip: int) -> tuple[float, float, float]:
    """The fastest plain loop for the same model: the same build (model, seeded batch stream), the same AdamW."""
    L.seed_everything(cfg.seed, verbose=False)  # as train.run does: the same initial weights
    task, module, data = build(cfg)
    model = module.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    for step in range(cfg.trainer.max_steps):
        if step == skip:
            start = (time.perf_counter(), time.process_time())
        inputs, targets, mask = task.sample(cfg.data.batch_size, data.generator)  # the run's batch stream
        logits, _ = model(inputs)  # [batch, pos, vocab]
        loss = masked_loss(logits, targets, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return start[0], time.perf_counter(), time.process_time() - start[1]


class BareModule(L.LightningModule):
    """Lightning's floor for this model: training_step does forward, loss, backward and the optimiser step, and
    counts the step as LightningOptimizer.step would; nothing else."""

    def __init__(self, model: torch.nn.Module, lr: float, weight_decay: float):
        super().__init__()
        self.model, self.lr, self.weight_decay = model, lr, weight_decay
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx: int) -> None:
        inputs, targets, mask = batch
        logits, _ = self.model(inputs)
        loss = masked_loss(logits, targets, mask)
        optimizer = self.optimizers(use_pl_optimizer=False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        progress.increment_ready()
        progress.increment_completed()

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def bare_lightning_window(cfg: DictConfig, skip: int) -> tuple[float, float, float]:
    L.seed_everything(cfg.seed, verbose=False)
    task, module, data = build(cfg)
    timer = StepTimer(skip, cfg.trainer.max_steps)
    batches = Batches(task, cfg.data.batch_size, data.generator, cfg.trainer.max_steps)  # the run's batch stream
    with quiet():
        trainer = L.Trainer(
            accelerator="cpu", devices=1, max_steps=cfg.trainer.max_steps, max_epochs=-1, limit_val_batches=0,
            num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[timer],
        )  # fmt: skip
        trainer.fit(BareModule(module.model, cfg.optim.lr, cfg.optim.weight_decay), train_dataloaders=batches)
    return timer.window()


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


def bench_loop(sizes: Sizes, report: Report) -> None:
    rows = []
    for name, extra, steps in (("default", [], sizes.loop_steps), ("larger", LARGER, sizes.loop_steps_larger)):
        cfg = config(
            ["logging=off", "device=cpu", "trainer.stop_at=null", f"trainer.max_steps={steps}",
             f"trainer.val_every_n_steps={steps}", "data.val_size=64", *extra]
        )  # fmt: skip
        rounds = sizes.rounds if name == "default" else min(sizes.rounds, 3)  # the larger one takes long
        say(f"loop/{name}: {rounds} rounds of {steps} steps, framework, bare Lightning and hand-written interleaved")
        skip = sizes.warmup_steps
        if name == "default":  # once untimed, in this process: what the sides' processes inherit is imported
            framework_window(cfg, skip), bare_lightning_window(cfg, skip), hand_written_window(cfg, skip)
        fw, bare, hand = rounds_of(
            lambda: framework_window(cfg, skip), lambda: bare_lightning_window(cfg, skip),
            lambda: hand_written_window(cfg, skip), rounds=rounds,
        )
        timed = steps - skip
        rate = lambda r: timed / r[0]  # steps per second of its own turns  # noqa: E731
        ratio = lambda side, clock: statistics.median(h[clock] / r[clock] for r, h in zip(side, hand))  # noqa: E731
        wall, cpu, bare_ratio = ratio(fw, 0), ratio(fw, 1), ratio(bare, 0)
        m = cfg.model
        rows.append(
            (f"{name}: dim {m.dim}, {m.heads} head(s), {m.layers} layer(s), seq {cfg.data.seq_len}, batch {cfg.data.batch_size}",
             f"{statistics.median(map(rate, hand)):.0f}", f"{statistics.median(map(rate, bare)):.0f}",
             f"{statistics.median(map(rate, fw)):.0f}", f"{bare_ratio:.2f}x", f"{wall:.2f}x", f"{cpu:.2f}x",
             ", ".join(f"{h[0] / r[0]:.2f}" for r, h in zip(fw, hand)))
        )  # fmt: skip
        report.target(
            f"framework / hand-written loop, steps/s ({name} size)",
            f"{wall:.2f}x (CPU time: {cpu:.2f}x; bare Lightning: {bare_ratio:.2f}x)", ">= 0.9x", wall >= 0.9,
        )
    report.details.append(
        "### 1. Framework vs hand-written loop (logging=off, device=cpu)\n\n"
        f"{sizes.rounds} rounds (3 at the larger size); in each, the three sides run at the same time in processes "
        "of their own, taking turns of 50 ms on the machine (`interleaved` in scripts/bench.py), so that they meet "
        f"the same load. Steps/s over all but the first {sizes.warmup_steps} steps of a run, per second of a side's "
        "own turns; every figure is the median of the rounds. The CPU-time ratio counts process CPU seconds. "
        "Bare Lightning is Lightning's own floor: the same model, batches and AdamW in a LightningModule with "
        "nothing else (no callbacks, logger, checkpoints or accuracies; plain backward and step), so "
        "hand-written → bare Lightning is what Lightning's loop costs and bare Lightning → framework what attnlab "
        "adds.\n\n"
        + table(
            ["model", "hand-written steps/s", "bare Lightning steps/s", "framework steps/s", "bare Lightning / hand",
             "framework / hand", "framework / hand (CPU time)", "framework / hand, each round"],
            rows,
        )  # fmt: skip
    )


# ---------------------------------------------------------------------------------------------------------------
# 1b. torch threads (device.threads)


def bench_threads(sizes: Sizes, report: Report) -> None:
    """The hand-written loop (no framework at all) at the default size, with device.threads (1) and with torch's
    default of one thread per core: what the device.threads default is based on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    steps = sizes.threads_steps
    cfg = config(["logging=off", "device=cpu", f"trainer.max_steps={steps}"])
    chosen = cfg.device.threads

    def at(threads: int) -> tuple[float, float, float]:
        torch.set_num_threads(threads)  # in the side's own process
        return hand_written_window(cfg, sizes.warmup_steps)

    rounds = min(sizes.rounds, 3)
    say(f"threads: {rounds} rounds of {steps} hand-written steps at {chosen} and {cores} threads, interleaved")
    one, all_cores = rounds_of(lambda: at(chosen), lambda: at(cores), rounds=rounds)
    timed = steps - sizes.warmup_steps
    rate = lambda side: statistics.median(timed / r[0] for r in side)  # noqa: E731
    cpu_per_step = lambda side: statistics.median(r[1] / timed for r in side)  # noqa: E731
    ratio = statistics.median(a[0] / o[0] for o, a in zip(one, all_cores))
    report.target(f"default size, device.threads={chosen} / torch's default ({cores} threads), steps/s", f"{ratio:.1f}x", "-", None)
    report.details.append(
        "### 1b. Torch threads\n\n"
        f"The hand-written loop at the default size, {steps} steps, with `device.threads={chosen}` (the default) and "
        f"with torch's default of one thread per core ({cores}); median of {rounds} interleaved rounds.\n\n"
        + table(
            ["threads", "steps/s", "CPU time per step"],
            [(chosen, f"{rate(one):.0f}", f"{cpu_per_step(one) * 1e3:.1f} ms"),
             (cores, f"{rate(all_cores):.0f}", f"{cpu_per_step(all_cores) * 1e3:.1f} ms")],
        )  # fmt: skip
    )


# ---------------------------------------------------------------------------------------------------------------
# 2. logging cost


def run_window(cfg: DictConfig) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as run_dir, quiet():
        start = time.perf_counter()
        run(cfg, Path(run_dir))
        return start, time.perf_counter()


def spread(values: list[float]) -> str:
    """The lowest, the quartiles and the highest, in %."""
    points = [min(values), *statistics.quantiles(values, n=4), max(values)] if len(values) > 1 else values
    return " / ".join(f"{100 * x:.1f}%" for x in points)


def bench_logging(sizes: Sizes, report: Report) -> None:
    steps = sizes.logging_steps
    common = ["device=cpu", "trainer.stop_at=null", f"trainer.max_steps={steps}"]
    on, off = config(common), config(common + ["logging=off"])
    rounds = sizes.logging_rounds
    say(f"logging: {rounds} rounds of {steps}-step runs, default logging and logging=off interleaved")
    run_window(on), run_window(off)  # once untimed, in this process: what the sides' processes inherit is imported
    with_logging, without = rounds_of(lambda: run_window(on), lambda: run_window(off), rounds=rounds)
    shares = [1 - o[0] / w[0] for w, o in zip(with_logging, without)]
    share = statistics.median(shares)
    lg = on.logging
    report.target("default logging, share of a run's wall time", f"{100 * share:.1f}%", "<= 5%", share <= 0.05)
    report.details.append(
        "### 2. Logging cost\n\n"
        f"Whole `train.run` of {steps} steps (validation every {on.trainer.val_every_n_steps}), default logging "
        f"(scalars every {lg.every_n_steps} steps; attention maps, weight images and histograms every "
        f"{lg.images_every_n_steps}; progress bar) vs `logging=off`, {rounds} rounds, the two runs of a round "
        "interleaved as in section 1; the share is the median of the rounds' shares.\n\n"
        + table(
            ["run", "seconds (median)"],
            [("default logging", f"{statistics.median(w[0] for w in with_logging):.2f}"),
             ("logging=off", f"{statistics.median(o[0] for o in without):.2f}"),
             ("logging share", f"{100 * share:.1f}%"),
             ("share per round: lowest / quartiles / highest", spread(shares))],
        )  # fmt: skip
    )


# ---------------------------------------------------------------------------------------------------------------
# 3. start-up


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


def bench_startup(sizes: Sizes, report: Report) -> None:
    def bare_import() -> tuple[float, float, float]:
        return launch([sys.executable, "-c", "import lightning.pytorch"])

    def to_first_step() -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as tmp:
            offset = time.perf_counter() - time.time()  # event files hold time.time()
            start, _, _ = launch(
                [sys.executable, str(TRAIN), f"hydra.run.dir={tmp}", "trainer.max_steps=1", "logging.every_n_steps=1"]
            )
            return start, first_step_time(Path(tmp)) + offset

    rounds = sizes.startup_rounds
    say(f"startup: {rounds} rounds of a bare import and scripts/train.py to its first step, interleaved")
    bare, train = rounds_of(bare_import, to_first_step, rounds=rounds)
    extra = statistics.median(t[0] - b[0] for b, t in zip(bare, train))
    report.target("start-up: scripts/train.py to first step, minus bare import", f"{extra:+.2f} s", "<= +1.5 s", extra <= 1.5)
    report.details.append(
        "### 3. Start-up\n\n"
        f"{rounds} rounds, the two commands of a round interleaved as in section 1; medians of the rounds. First "
        "step: the earliest training-step scalar in the run's event file (written with `logging.every_n_steps=1`), "
        "against the launch time.\n\n"
        + table(
            ["", "seconds"],
            [('`python -c "import lightning.pytorch"`', f"{statistics.median(b[0] for b in bare):.2f}"),
             ("`python scripts/train.py` to its first training step", f"{statistics.median(t[0] for t in train):.2f}"),
             ("difference (median of the rounds')", f"{extra:+.2f}")],
        )  # fmt: skip
    )


# ---------------------------------------------------------------------------------------------------------------
# 4. attention paths


def attention_seconds(layer: SelfAttention, x: Tensor, need_weights: bool) -> tuple[float, Tensor, list[Tensor]]:
    """One forward + backward; returns (seconds, output, gradients of x and the four weights)."""
    x = x.detach().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    output, _ = layer(x, need_weights)
    output.square().sum().backward()
    seconds = time.perf_counter() - start
    return seconds, output.detach(), [x.grad] + [p.grad for p in (layer.W_Q, layer.W_K, layer.W_V, layer.W_O)]


def bench_attention(sizes: Sizes, report: Report) -> None:
    rows, all_equal = [], True
    say(f"attention: dims {sizes.attention_dims} x lengths {sizes.attention_lengths}, explicit and fused alternated")
    torch.manual_seed(0)
    for dim in sizes.attention_dims:
        heads = max(1, dim // 64)  # d_head 64, as in most transformers
        layer = SelfAttention(dim, heads, causal=True)
        for length in sizes.attention_lengths:
            batch = max(1, sizes.attention_tokens // length)
            x = torch.randn(batch, length, dim)
            _, explicit_out, explicit_grads = attention_seconds(layer, x, True)  # warm-up, and the check
            _, fused_out, fused_grads = attention_seconds(layer, x, False)
            difference = max((a - b).abs().max().item() for a, b in zip([explicit_out] + explicit_grads, [fused_out] + fused_grads))
            scale = max(t.abs().max().item() for t in [explicit_out] + explicit_grads)
            equal = difference <= 1e-4 * max(1.0, scale)
            all_equal &= equal
            explicit, fused = alternate(
                lambda: attention_seconds(layer, x, True)[0], lambda: attention_seconds(layer, x, False)[0],
                rounds=sizes.attention_repeats,
            )
            e, f = min(explicit), min(fused)
            rows.append(
                (dim, heads, length, batch, f"{1e3 * e:.2f}", f"{1e3 * f:.2f}", f"{e / f:.2f}x",
                 f"{batch * length / f / 1e3:.0f}k", f"{difference:.1e}" + ("" if equal else " **differ**"))
            )  # fmt: skip
    longest = [r for r in rows if r[2] == max(sizes.attention_lengths)]
    report.target(
        f"fused / explicit attention speed-up at seq {max(sizes.attention_lengths)} (fwd+bwd)",
        ", ".join(f"dim {r[0]}: {r[6]}" for r in longest), "-", None,
    )
    report.target("explicit and fused attention: same outputs and gradients", "yes" if all_equal else "NO", "equal", all_equal)
    report.details.append(
        "### 4. Attention paths (one causal SelfAttention layer, forward + backward, float32)\n\n"
        f"Batch = {sizes.attention_tokens} tokens / seq len; best of {sizes.attention_repeats} alternated repeats. "
        "Max |difference| over the output and the gradients of x, W_Q, W_K, W_V, W_O.\n\n"
        + table(
            ["dim", "heads", "seq len", "batch", "explicit ms", "fused ms", "speed-up", "fused tokens/s", "max |diff|"], rows
        )
    )


# ---------------------------------------------------------------------------------------------------------------
# 5. sweep throughput


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


def bench_sweep(sizes: Sizes, report: Report) -> None:
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
        "`python scripts/train.py -m seed=range(0,JOBS) logging=off trainer.stop_at=null trainer.max_steps=STEPS`, "
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


# ---------------------------------------------------------------------------------------------------------------
# 6. time to solve


def bench_solve(sizes: Sizes, report: Report) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not sizes.solve:
        report.notes.append("Time to solve skipped (--quick).")
        return
    say("solve: the default config until val/seq_acc >= 0.99")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        launched, ended, _ = launch([sys.executable, str(TRAIN), f"hydra.run.dir={tmp}"])
        total = ended - launched
        first = first_step_time(Path(tmp))
        solved = None
        for events in Path(tmp).rglob("events.out.tfevents.*"):
            accumulator = EventAccumulator(str(events.parent))
            accumulator.Reload()
            if "val/seq_acc" in accumulator.Tags()["scalars"]:
                solved = next((e for e in accumulator.Scalars("val/seq_acc") if e.value >= 0.99), None)
    if solved is None:
        report.target("default config: launch to val/seq_acc >= 0.99", "not reached", "-", False)
        return
    report.target("default config: launch to val/seq_acc >= 0.99", f"{solved.wall_time - start:.1f} s (step {solved.step})", "-", None)
    report.details.append(
        "### 6. Time to solve\n\n`python scripts/train.py` (default config and logging), one run.\n\n"
        + table(
            ["", "wall s"],
            [("launch to first training step", f"{first - start:.1f}"),
             (f"launch to val/seq_acc >= 0.99 (step {solved.step}, val/seq_acc {solved.value:.3f})", f"{solved.wall_time - start:.1f}"),
             ("launch to exit (stops at trainer.stop_at, then final validation and checkpoint)", f"{total:.1f}")],
        )  # fmt: skip
    )


# ---------------------------------------------------------------------------------------------------------------


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cores} CPU cores ({cpu}), no GPU used; torch {torch.__version__} (intra-op threads: {torch.get_num_threads()}"
        f"), lightning {lightning.__version__}, Python {platform.python_version()}"
    )


def render(report: Report, sections: list[str], quick: bool, load: tuple[float, float], command: str) -> tuple[str, str]:
    """(the full report for docs/bench.md, the summary for docs/performance.md)"""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    head = (
        f"Measured {when} with `{command}`{' (QUICK: tiny sizes, not a measurement)' if quick else ''}.\n\n"
        f"Machine: {machine()}. Load average {load[0]:.1f} at the start, {load[1]:.1f} at the end "
        f"({'shared with other work: absolute times are noisy, ratios less so' if max(load) > 1.5 else 'mostly idle'}). "
        "GPU figures: not measured (no GPU on this machine).\n\n"
        + table(["what", "measured", "target (2 CPU cores)", "met"], report.summary)
    )
    notes = "".join(f"\n\n{n}" for n in report.notes)
    full = "# Benchmark\n\n" + head + notes + "\n\n" + "\n\n".join(report.details) + "\n"
    return full, head + notes


def update_readme(readme: Path, summary: str) -> None:
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"error: {readme} has no {README_START} ... {README_END} markers to put the results between")
    readme.write_text(text[: start + len(README_START)] + "\n" + summary + "\n" + text[end:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {','.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs (figures are meaningless)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench.md"), help="where the full report goes")
    parser.add_argument("--readme", default=str(ROOT / "docs" / "performance.md"), help="the page whose bench section is replaced; 'none' to leave it")
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; allowed: {', '.join(SECTIONS)}")
    if args.quick and args.readme != "none" and Path(args.readme).resolve() == (ROOT / "docs" / "performance.md"):
        parser.error("--quick figures are meaningless: pass --readme none (or another file) with --quick")

    sizes = QUICK if args.quick else Sizes()
    threads = config([]).device.get("threads")
    if threads:  # every side of every comparison with the threads a default run has (attnlab/sweep.py sets them)
        torch.set_num_threads(threads)
    report = Report()
    load_start = os.getloadavg()[0]
    benches = {"loop": bench_loop, "threads": bench_threads, "logging": bench_logging, "startup": bench_startup,
               "attention": bench_attention, "sweep": bench_sweep, "solve": bench_solve}  # fmt: skip
    for name in SECTIONS:
        if name in sections:
            benches[name](sizes, report)
    command = "python scripts/bench.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    full, summary = render(report, sections, args.quick, (load_start, os.getloadavg()[0]), command)
    print(full)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(full)
    if args.readme != "none":
        update_readme(Path(args.readme), summary + f"\n\nDetails per section: [{Path(args.out).name}]({os.path.relpath(args.out, Path(args.readme).parent)}).")


if __name__ == "__main__":
    main()
