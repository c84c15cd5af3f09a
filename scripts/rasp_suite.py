"""The RASP suite (Weiss, Goldberg and Yahav 2021): every recipe of conf/experiment/rasp/ over seeds, tabled in
docs/rasp.md.

    python scripts/rasp_suite.py                          # every recipe, seeds 0-4; table into docs/rasp.md
    python scripts/rasp_suite.py --only reverse,reverse_minus_layer --seeds 2     # some recipes, fewer seeds
    python scripts/rasp_suite.py --out outputs/rasp/2026-12-06_22-00-00           # go on with a stopped suite
    python scripts/rasp_suite.py --out outputs/rasp/2026-12-06_22-00-00 --read-only   # its table, writing nothing

Each recipe is one sweep over the seeds, trained as one stacked model (the stacked launcher):

    python scripts/train.py -m +experiment=rasp/reverse 'seed=range(5)' hydra/launcher=stacked

A recipe whose directory under --out holds a finished job per seed is read, not trained again. The table has a row
per recipe: its task and size, per-token accuracy (val/acc, over the output positions) and whole-sequence accuracy
(val/seq_acc), each mean ± standard deviation over the seeds, and per selector of the task's RASP program its best
head's alignment (align/layer{L}/selector{S}; in supervised recipes the supervised head's own, align/layer{L}/head{S},
is the same head), from the runs' metrics.json. Recipes with no finished run under --out are listed as not measured,
with the command that measures them. The paper's figure is quoted only where the paper or its repository gives it.
"""

import argparse
import json
import os
import re
import statistics
import sys
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from attnlab import pages, suites, tags

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "conf" / "experiment" / "rasp"
PAGE = ROOT / "docs" / "rasp.md"
VARIANTS = ("", "_minus_head", "_minus_layer", "_minus_layer_wide", "_supervised")
# The paper's Table 1 and figures are not in tech-srl/RASP-exps or tech-srl/RASP; no figure of it is quoted here
# until one is read from the paper itself.
PAPER = "not confirmed"


def sweep(name: str, out: Path, seeds: int) -> dict | None:
    """Seeds 0 .. seeds-1 of one recipe into out/name, its wall and CPU time into out/name/wall.json (None where it
    was finished before)."""
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), "-m", f"+experiment=rasp/{name}",
               f"seed=range({seeds})", "hydra/launcher=stacked", f"hydra.sweep.dir={out / name}",
               "logging.progress_bar=false"]  # fmt: skip
    return suites.recorded_sweep(command, out / name, jobs=seeds, cwd=ROOT, seeds=seeds)


def runs(sweep_dir: Path) -> list[tuple[dict, dict]]:
    """(config, final metrics) of every finished job of a sweep."""
    found = []
    for metrics in sorted(sweep_dir.rglob("metrics.json")):
        cfg = OmegaConf.to_container(OmegaConf.load(metrics.parent / ".hydra" / "config.yaml"))
        found.append((cfg, json.loads(metrics.read_text())))
    return found


def selectors(metrics: dict) -> list[tuple[int, int]]:
    """(layer, selector) of every align/layer{L}/selector{S} a run logged, in order."""
    found = [re.fullmatch(r"align/layer(\d+)/selector(\d+)", k) for k in metrics]
    return sorted((int(m[1]), int(m[2])) for m in found if m)


def row(name: str, sweep_dir: Path) -> list[str]:
    """One recipe's cells: recipe, size, seeds, acc, seq_acc, seeds >= 99%, last step (median), alignment per
    selector, wall, CPU per seed, paper."""
    recipe = OmegaConf.to_container(OmegaConf.load(RECIPES / f"{name}.yaml"))
    model = recipe["model"]
    found = runs(sweep_dir) if sweep_dir.is_dir() else []
    size = f"{model['layers']}×{model['heads']}" + (f", d={model['dim']}" if model["dim"] != 64 else "")
    if not found:
        return [f"`{name}`", size, "0", "not measured", "", "", "", "", "", "", PAPER]
    metrics = [m for _, m in found]
    acc = [m[tags.metric("val", "acc")] for m in metrics]
    seq = [m[tags.metric("val", "seq_acc")] for m in metrics]
    supervised = name.endswith("_supervised")
    align = []
    for layer, s in selectors(metrics[0]):
        key = tags.align(layer, s) if supervised else tags.align_selector(layer, s)
        align.append(f"L{layer}S{s} {suites.spread([m[key] for m in metrics if key in m])}")
    solved = sum(a >= 0.99 for a in acc)
    step = statistics.median(m["step"] for m in metrics)
    recorded = suites.times(sweep_dir)  # wall: all the seeds as one stacked model; CPU: per seed
    wall = f"{recorded['wall_s'] / 60:.1f}" if "wall_s" in recorded else "–"
    cpu = f"{recorded['cpu_s'] / recorded['seeds'] / 60:.1f}" if "cpu_s" in recorded else "–"
    return [f"`{name}`", size, str(len(metrics)), suites.spread(acc, 3), suites.spread(seq, 3),
            f"{solved}/{len(metrics)}", f"{step:g}", "; ".join(align) or "–", wall, cpu, PAPER]


def table(names: list[str], out: Path) -> str:
    head = ["recipe", "layers×heads", "seeds", "acc", "seq_acc", "acc ≥ 0.99", "last step", "alignment per selector",
            "wall (min)", "CPU per seed (min)", "paper"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        lines.append("| " + " | ".join(row(name, out / name)) + " |")
    return "\n".join(lines)


def ordered(names: list[str]) -> list[str]:
    """Recipes by task, then compiled size, ablations, supervised (VARIANTS' order)."""
    def key(name: str):
        variant = max((v for v in VARIANTS if v and name.endswith(v)), key=len, default="")
        return name[: len(name) - len(variant)], VARIANTS.index(variant)
    return sorted(names, key=key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated recipes of conf/experiment/rasp/ to train (default: all)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 per recipe (default 5)")
    parser.add_argument("--out", type=Path, help="the directory to run in (default: a new one under outputs/rasp)")
    parser.add_argument("--read-only", action="store_true", help="train and write nothing: the table of what --out holds")
    args = parser.parse_args()
    names = ordered([p.stem for p in RECIPES.glob("*.yaml")])
    train = suites.chosen(RECIPES.relative_to(ROOT), args.only, names)
    if args.seeds < 1:
        print(f"error: --seeds must be >= 1, got {args.seeds}", file=sys.stderr)
        sys.exit(2)
    if args.read_only and (args.out is None or not args.out.is_dir()):
        print("error: --read-only needs --out, a suite's directory to table", file=sys.stderr)
        sys.exit(2)
    out = (args.out or ROOT / "outputs" / "rasp" / f"{datetime.now():%Y-%m-%d_%H-%M-%S}").resolve()
    if not args.read_only:
        for name in train:
            sweep(name, out, args.seeds)
    walls = [suites.times(out / n).get("wall_s", 0) for n in names]
    measured = [n for n in names if (out / n).is_dir() and runs(out / n)]
    text = (f"Measured {datetime.now():%Y-%m-%d %H:%M} on {os.cpu_count()} CPU cores by `python scripts/rasp_suite.py"
            f"{'' if args.seeds == 5 else f' --seeds {args.seeds}'}` ({len(measured)} of {len(names)} recipes; their "
            f"walls add up to {sum(walls) / 60:.1f} min; load average {os.getloadavg()[0]:.1f} at the end). acc and "
            f"seq_acc: mean ± standard deviation over the seeds; alignment: per selector L{{layer}}S{{selector}} its "
            f"best head's (supervised recipes: the supervised head's own). Rows reading \"not measured\" were not run: "
            f"`python scripts/rasp_suite.py --out DIR` runs every recipe that DIR lacks.\n\n"
            + table(names, out) + "\n")  # fmt: skip
    print("\n" + text)
    if args.read_only:
        return
    (out / "results.md").write_text(text)
    pages.write(PAGE, "rasp", text)


if __name__ == "__main__":
    main()
