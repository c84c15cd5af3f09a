"""A long run with default logging, watched from outside: does resident memory stay flat after warm-up (no leaked
figures or tensors), and does the event file grow linearly and modestly?

    python scripts/soak.py                       # 20,000 steps of the default config (CPU), about 15 min on 2 cores
    python scripts/soak.py --steps 2000 model.dim=64   # shorter, or any other train.py overrides

Memory is expected to be flat after --warmup steps (default: the first tenth of the run), and the summary fits the
samples taken after it, so the run must go on past it.

Starts scripts/train.py as a subprocess, samples its resident set size (Linux /proc) and the size of its event
files every few seconds, then reads the event files back to turn sample times into training steps. Prints a table
and a summary (RSS growth after warm-up, event-file MB per 1,000 steps), and writes both to <run dir>/soak.json.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]


def resident_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB -> MB
    except OSError:
        return None  # the process has ended
    return None


def events_mb(run_dir: Path) -> float:
    return sum(p.stat().st_size for p in run_dir.glob("events.out.tfevents.*")) / 2**20


def step_at(times: list[tuple[float, int]], t: float) -> int:
    """The last training step logged at or before wall time t."""
    return max((step for wall, step in times if wall <= t), default=0)


def line_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares slope, intercept and the largest distance of a point from the line (xs: two values at least)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    intercept = my - slope * mx
    return slope, intercept, max(abs(y - (slope * x + intercept)) for x, y in zip(xs, ys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20_000, help="training steps (default: 20000)")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples (default: 5)")
    parser.add_argument("--warmup", type=int, help="steps before memory is expected to be flat (default: steps / 10)")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "outputs" / "soak" / time.strftime("%Y-%m-%d_%H-%M-%S"),
                        help="the run's directory (default: outputs/soak/<date>_<time>)")
    args, overrides = parser.parse_known_args()
    if args.warmup is None:
        args.warmup = args.steps // 10
    if not 0 <= args.warmup < args.steps:
        parser.exit(2, f"error: --warmup must be at least 0 and below --steps ({args.steps}), got {args.warmup}\n")

    command = [
        sys.executable, str(ROOT / "scripts" / "train.py"), "device=cpu", f"trainer.max_steps={args.steps}",
        "trainer.stop_at=null", "logging.progress_bar=false", *overrides, f"hydra.run.dir={args.run_dir}",
    ]
    print(" ".join(command), flush=True)
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = []  # (wall time, RSS MB, event files MB)
    while process.poll() is None:
        rss = resident_mb(process.pid)
        if rss:  # None once the process has ended; 0 while it is still starting
            samples.append((time.time(), rss, events_mb(args.run_dir)))
        time.sleep(args.every)
    stderr = process.stderr.read()
    if process.returncode != 0:
        sys.exit(f"training failed (exit {process.returncode}):\n{stderr[-3000:]}")

    events = EventAccumulator(str(args.run_dir), size_guidance={"scalars": 0}).Reload()
    times = [(e.wall_time, e.step) for e in events.Scalars("train/loss")]
    rows = [(step_at(times, t), rss, mb) for t, rss, mb in samples]
    print(f"\n{'step':>7} {'RSS MB':>8} {'events MB':>10}")
    for step, rss, mb in rows[:: max(1, len(rows) // 40)] + rows[-1:]:
        print(f"{step:7d} {rss:8.1f} {mb:10.2f}")

    after = [(step, rss, mb) for step, rss, mb in rows if step >= args.warmup]
    if len({step for step, _, _ in after}) < 2:  # no line to fit: the run ended too soon after the warm-up
        sys.exit(f"error: {len(after)} sample(s) after the {args.warmup}-step warm-up, at fewer than two steps: "
                 "nothing to fit (more --steps, a lower --warmup or a shorter --every)")
    rss_after = [rss for _, rss, _ in after]
    slope, _, off_line = line_fit([s for s, _, _ in after], [mb for _, _, mb in after])
    final_mb = events_mb(args.run_dir)
    summary = {
        "steps": args.steps,
        "overrides": overrides,
        "wall_s": round(samples[-1][0] - samples[0][0], 1),
        "rss_mb_at_warmup": round(rss_after[0], 1),
        "rss_mb_max_after_warmup": round(max(rss_after), 1),
        "rss_mb_at_end": round(rss_after[-1], 1),
        "rss_growth_mb_after_warmup": round(rss_after[-1] - rss_after[0], 1),
        "events_mb_total": round(final_mb, 2),
        "events_mb_per_1000_steps": round(slope * 1000, 3),
        "events_mb_largest_distance_from_line": round(off_line, 3),
    }
    print("\n" + json.dumps(summary, indent=2))
    (args.run_dir / "soak.json").write_text(json.dumps({"summary": summary, "samples": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
