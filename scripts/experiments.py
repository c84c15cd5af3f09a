"""Run every recipe in conf/experiment/ (one `scripts/train.py +experiment=NAME` subprocess each, one after the
other) and write the results table into docs/tasks.md between the `experiments` marker comments.

    python scripts/experiments.py                    # all recipes, table into docs/tasks.md
    python scripts/experiments.py --only copy,mqar   # some of them (docs/tasks.md is left alone)
    python scripts/experiments.py --no-readme        # print and save the table only

Runs go to outputs/experiments/<date>_<time>/<recipe>/, with the table as results.md and results.json beside them.
Wall time is the whole subprocess (start-up included); "solved after" is the wall time from the run's first
TensorBoard event to the first validation with val/seq_acc >= 0.99, and the step it happened at.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from attnlab import tags

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "conf" / "experiment"
README = ROOT / "docs" / "tasks.md"  # the page whose table is replaced
START, END = "<!-- experiments:start -->", "<!-- experiments:end -->"
SOLVED = 0.99
# The targets on 2 CPU cores: seconds to solve each task (val/seq_acc, held-out accuracy for modular addition).
BUDGET = {"copy": 60, "reverse": 60, "sort": 60, "histogram": 60, "majority": 60,
          "induction": 180, "mqar": 180, "selective_copy": 180, "modular_addition": 600}
ALIGNED = 0.9


def run(name: str, out: Path) -> dict:
    run_dir = out / name
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), f"+experiment={name}", f"hydra.run.dir={run_dir}",
               "logging.progress_bar=false"]
    print(f"== {name}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if finished.returncode != 0:
        print(finished.stderr[-3000:], file=sys.stderr)
        return {"recipe": name, "error": f"exit {finished.returncode}", "wall_s": wall}
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    val = events.Scalars(tags.metric("val", "seq_acc"))
    first_event = min(events.Scalars(tags.metric("train", "loss"))[0].wall_time, val[0].wall_time)
    solved = next((e for e in val if e.value >= SOLVED), None)
    m = cfg["model"]
    return {
        "recipe": name,
        "task": cfg["data"]["task"],
        "model": f"{m['layers']}/{m['heads']}/{m['dim']}" + (" +mlp" if m["mlp"] else ""),
        "steps": val[-1].step,
        "wall_s": wall,
        "solved_s": None if solved is None else solved.wall_time - first_event,
        "solved_step": None if solved is None else solved.step,
        "seq_acc": metrics[tags.metric("val", "seq_acc")],
        "align": {k: v for k, v in metrics.items() if k.startswith("align/")},
        "run_dir": str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT) else str(run_dir),
    }


def per_layer(align: dict) -> str:
    """'L0 0.99, L1 1.00': each layer's best head."""
    best = {}
    for tag, value in align.items():
        if match := re.fullmatch(r"align/layer(\d+)/head\d+", tag):
            best[int(match[1])] = max(best.get(int(match[1]), 0.0), value)
    return ", ".join(f"L{layer} {value:.2f}" for layer, value in sorted(best.items()))


def table(results: list[dict]) -> str:
    lines = [
        "| recipe | layers/heads/dim | steps | wall (s) | solved after (s, step) | val/seq_acc | align/best (per layer) "
        "| targets met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| `{r['recipe']}` | | | {r['wall_s']:.0f} | failed: {r['error']} | | | no |")
            continue
        solved = "not solved" if r["solved_s"] is None else f"{r['solved_s']:.0f} (step {r['solved_step']})"
        best = r["align"].get(tags.ALIGN_BEST)
        align = "no target" if best is None else f"{best:.3f} ({per_layer(r['align'])})"
        met = (r["solved_s"] is not None and r["solved_s"] <= BUDGET.get(r["task"], float("inf"))
               and r["seq_acc"] >= SOLVED and (best is None or best >= ALIGNED))
        lines.append(f"| `{r['recipe']}` | {r['model']} | {r['steps']} | {r['wall_s']:.0f} | {solved} | "
                     f"{r['seq_acc']:.3f} | {align} | {'yes' if met else 'no'} |")
    return "\n".join(lines)


def machine() -> str:
    return (f"{datetime.now():%Y-%m-%d}, {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
            f"torch {torch.__version__}, load average before the runs {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated recipe names (default: all in conf/experiment/)")
    parser.add_argument("--no-readme", action="store_true", help="do not write the table into docs/tasks.md")
    args = parser.parse_args()
    names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    if args.only:
        unknown = set(args.only.split(",")) - set(names)
        if unknown:
            sys.exit(f"error: --only: no recipe {', '.join(sorted(unknown))} in conf/experiment/ "
                     f"(have: {', '.join(names)})")
        names = [n for n in names if n in args.only.split(",")]
    out = ROOT / "outputs" / "experiments" / f"{datetime.now():%Y-%m-%d_%H-%M-%S}"
    out.mkdir(parents=True)
    where = machine()
    results = [run(name, out) for name in names]
    text = f"Measured {where} by `python scripts/experiments.py`:\n\n{table(results)}\n"
    print("\n" + text)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"machine": where, "results": results}, indent=2) + "\n")
    if not args.no_readme and not args.only:
        readme = README.read_text()
        if START not in readme or END not in readme:
            sys.exit(f"error: {README} has no {START} ... {END} markers to write the table between")
        head, rest = readme.split(START, 1)
        _, tail = rest.split(END, 1)
        README.write_text(f"{head}{START}\n{text}{END}{tail}")
        print(f"table written into {README}")


if __name__ == "__main__":
    main()
