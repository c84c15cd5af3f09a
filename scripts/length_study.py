"""The length study: does a head's pattern hold at lengths it never trained on, under each position scheme?

    python scripts/length_study.py                   # both recipes, every scheme, seeds 0-4; table into docs/lengths.md
    python scripts/length_study.py --only copy       # one recipe (docs/lengths.md is left alone)
    python scripts/length_study.py --out outputs/lengths/2026-12-06_22-00-00              # go on with a stopped study
    python scripts/length_study.py --out outputs/lengths/2026-12-06_22-00-00 --read-only  # its table, writing nothing

Each recipe of conf/experiment/lengths/ (trained at lengths up to data.seq_len, scored on data.val_lengths) is one
sweep over model.positions=learned,sinusoidal,none,rope,alibi and seeds 0-4:

    python scripts/train.py -m +experiment=lengths/copy model.positions=learned,sinusoidal,none,rope,alibi \\
        'seed=range(5)' hydra/launcher=stacked

(the stacked launcher trains each scheme's five seeds as one model). The table has, per recipe, scheme and length,
the per-token accuracy (val/len{N}/acc), the whole-sequence accuracy (val/len{N}/seq_acc) and the alignment of the
best head with the target pattern (align/len{N}/best), each as mean ± standard deviation over the seeds, from the
runs' metrics.json. With --out, a recipe whose directory there holds every job's metrics.json is read, not trained
again; --read-only trains nothing and writes nothing but the table it prints.
"""

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from attnlab import pages, suites, tags
from attnlab.positions import SCHEMES

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "conf" / "experiment" / "lengths"
PAGE = ROOT / "docs" / "lengths.md"
SEEDS = 5


def sweep(name: str, out: Path) -> dict | None:
    """Every scheme and seed of one recipe into out/name, its wall and CPU time into out/name/wall.json (None where
    it was finished before)."""
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), "-m", f"+experiment=lengths/{name}",
               f"model.positions={','.join(SCHEMES)}", f"seed=range({SEEDS})", "hydra/launcher=stacked",
               f"hydra.sweep.dir={out / name}", "logging.progress_bar=false"]  # fmt: skip
    return suites.recorded_sweep(command, out / name, jobs=len(SCHEMES) * SEEDS, cwd=ROOT)


def runs(sweep_dir: Path) -> list[tuple[str, list[int], dict]]:
    """(model.positions, data.val_lengths, final metrics) of every finished job of a sweep."""
    found = []
    for metrics in sorted(sweep_dir.rglob("metrics.json")):  # jobs under +experiment=lengths/...
        cfg = OmegaConf.load(metrics.parent / ".hydra" / "config.yaml")
        found.append((cfg.model.positions, list(cfg.data.val_lengths), json.loads(metrics.read_text())))
    return found


def table(name: str, found: list[tuple[str, list[int], dict]]) -> str:
    """One recipe's rows: a scheme per row, per length its acc, seq_acc and align/best over the seeds."""
    lengths = found[0][1] if found else []
    head = ["positions", "seeds"] + [f"{what} @ {n}" for n in lengths for what in ("acc", "seq_acc", "align")]
    lines = [f"**{name}** (`+experiment=lengths/{name}`)", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]  # fmt: skip
    for scheme in SCHEMES:
        mine = [m for positions, _, m in found if positions == scheme]
        cells = [f"`{scheme}`", str(len(mine))]
        for n in lengths:
            stage = tags.length_stage(n)
            cells += [suites.spread([m[tags.metric(stage, "acc")] for m in mine]),
                      suites.spread([m[tags.metric(stage, "seq_acc")] for m in mine]),
                      suites.spread([m[tags.align_best(n)] for m in mine if tags.align_best(n) in m])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated recipes of conf/experiment/lengths/ (default: all)")
    parser.add_argument("--out", type=Path, help="the directory to run in (default: a new one under outputs/lengths)")
    parser.add_argument("--read-only", action="store_true", help="train and write nothing: the table of what --out holds")
    args = parser.parse_args()
    names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    names = suites.chosen(RECIPES.relative_to(ROOT), args.only, names)
    if args.read_only and (args.out is None or not args.out.is_dir()):
        print("error: --read-only needs --out, a study's directory to table", file=sys.stderr)
        sys.exit(2)
    out = (args.out or ROOT / "outputs" / "lengths" / f"{datetime.now():%Y-%m-%d_%H-%M-%S}").resolve()
    times = []
    for name in names:
        if not args.read_only:
            sweep(name, out)
        times.append(suites.times(out / name))
    wall, cpu = (sum(t.get(k, 0) for t in times) / 60 for k in ("wall_s", "cpu_s"))
    text = (f"Measured {datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPU cores, seeds 0-{SEEDS - 1}, by "
            f"`python scripts/length_study.py` ({wall:.1f} min wall, {cpu:.1f} min CPU; load average "
            f"{os.getloadavg()[0]:.1f} at the end):\n\n"
            + "\n\n".join(table(name, runs(out / name)) for name in names) + "\n")  # fmt: skip
    print("\n" + text)
    if args.read_only:
        return
    (out / "results.md").write_text(text)
    if not args.only:
        pages.write(PAGE, "lengths", text)


if __name__ == "__main__":
    main()
