"""Seeds aggregated in the sweep summary: jobs that differ only in seed make one row per setting in
summary_seeds.csv, the terminal and summary.png. Made from job directories alone, so the fabricated ones here stand
for any launcher's; one real sweep checks that runs record what the summary reads."""

import csv
import json
import math
import statistics

import pytest
from omegaconf import OmegaConf

from attnlab import seeds, summary
from test_sweep import train_forked


def job_dir(sweep_dir, number, overrides, metrics=None, status="ok", stop_at=0.99):
    """A job directory as a run in a sweep leaves it: .hydra/, job.json, and metrics.json if it finished."""
    run_dir = sweep_dir / ",".join(overrides)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save({"trainer": {"stop_at": stop_at}}, run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(overrides, run_dir / ".hydra" / "overrides.yaml")
    error = None if status == "ok" else "training diverged"
    (run_dir / "job.json").write_text(json.dumps({"status": status, "error": error, "wall_s": 1.0, "job": number, "overrides": overrides}))
    if metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics))


def rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


# lr 1e-3: seeds 0-2 stop at steps 300, 500, 400; lr 1e-2: seed 0 stops at 200, seed 1 runs out of steps (1000)
# below stop_at, seed 2 diverges.
FINAL = {
    ("1e-3", 0): (1.0, 0.01, 300), ("1e-3", 1): (0.995, 0.02, 500), ("1e-3", 2): (1.0, 0.015, 400),
    ("1e-2", 0): (1.0, 0.03, 200), ("1e-2", 1): (0.90, 0.40, 1000), ("1e-2", 2): None,
}  # fmt: skip


@pytest.fixture
def seeded_sweep(tmp_path):
    for number, ((lr, seed), final) in enumerate(FINAL.items()):
        overrides = [f"optim.lr={lr}", f"seed={seed}"]
        if final is None:
            job_dir(tmp_path, number, overrides, status="failed")
        else:
            seq_acc, loss, step = final
            job_dir(tmp_path, number, overrides, {"val/loss": loss, "val/seq_acc": seq_acc, "align/best": 0.9, "step": step})
    return tmp_path


def test_seeds_grouped_per_setting(seeded_sweep, capsys):
    summary.summarize(seeded_sweep)
    table = {row["optim.lr"]: row for row in rows(seeded_sweep / "summary_seeds.csv")}
    assert set(table) == {"0.001", "0.01"}
    slow, fast = table["0.001"], table["0.01"]
    assert (slow["seeds"], slow["n"], slow["finished"], slow["solved"]) == ("0 1 2", "3", "3", "3")
    assert (fast["n"], fast["finished"], fast["solved"]) == ("3", "2", "1")
    loss = [0.01, 0.02, 0.015]
    assert float(slow["val/loss_mean"]) == pytest.approx(statistics.fmean(loss))
    assert float(slow["val/loss_std"]) == pytest.approx(statistics.stdev(loss))
    assert (float(slow["val/loss_min"]), float(slow["val/loss_max"])) == (0.01, 0.02)
    # The step stop_at was reached, over the solved seeds only; the raw final step is no column of its own.
    assert [float(slow[f"solved_step_{s}"]) for s in ("mean", "min", "max")] == [400, 300, 500]
    assert float(slow["solved_step_std"]) == pytest.approx(100)
    assert (fast["solved_step_mean"], fast["solved_step_std"]) == ("200.0", "")  # one value: no std
    assert float(fast["val/seq_acc_mean"]) == pytest.approx(0.95)  # the finished seeds; the failed one has none
    assert "step_mean" not in slow

    printed = capsys.readouterr().out
    assert "Over seeds, per setting:" in printed and "summary_seeds.csv" in printed
    line = next(line for line in printed.splitlines() if line.startswith("0.001 "))
    assert "0.015 ± 0.005 [0.01, 0.02]" in line and "400 ± 100 [300, 500]" in line
    assert (seeded_sweep / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # summary.csv stays a row per job, with the step each ended at
    assert [row["step"] for row in rows(seeded_sweep / "summary.csv")] == ["300", "500", "400", "200", "1000", ""]


def test_no_seed_table_without_seeds_to_aggregate(tmp_path, capsys):
    for number, dim in enumerate((16, 32)):  # seeds not swept: nothing to aggregate
        job_dir(tmp_path, number, [f"model.dim={dim}"], {"val/seq_acc": 1.0, "step": 100})
    (tmp_path / "summary_seeds.csv").write_text("from an older summary\n")
    summary.summarize(tmp_path)
    assert not (tmp_path / "summary_seeds.csv").exists()
    assert "Over seeds" not in capsys.readouterr().out


def test_the_seed_alone_swept_and_stop_at_null(tmp_path):
    """One setting; with trainer.stop_at=null no run stops early, so none has a step it was reached at, and solved
    means a final val/seq_acc of at least 0.99."""
    for seed, seq_acc in enumerate((1.0, 0.995, 0.5)):
        job_dir(tmp_path, seed, [f"seed={seed}"], {"val/seq_acc": seq_acc, "step": 1000}, stop_at=None)
    summary.summarize(tmp_path)
    (row,) = rows(tmp_path / "summary_seeds.csv")
    assert (row["n"], row["solved"], row["solved_step_mean"]) == ("3", "2", "")
    assert list(row)[0] == "seeds"  # no other swept key to name the setting


def test_solved_step_needs_the_threshold_passed():
    job = {"status": "ok", "stop_at": 0.99, "metrics": {"val/seq_acc": 0.99, "step": 3000}}
    assert seeds.solved_step(job) is None  # Lightning's EarlyStopping stops above the threshold, not at it
    job["metrics"]["val/seq_acc"] = 0.995
    assert seeds.solved_step(job) == 3000


@pytest.mark.slow
def test_a_real_sweep_over_seeds(tmp_path, script_runs):
    """scripts/train.py -m over two seeds: each run records the step it stopped at, the summary aggregates them."""
    sweep_dir = tmp_path / "sweep"
    fast = ["data.seq_len=2", "data.vocab_size=4", "data.val_size=32", "trainer.max_steps=200",
            "trainer.val_every_n_steps=10", "trainer.stop_at=0.9", "logging=off", "device=cpu"]  # fmt: skip
    result = train_forked(script_runs, ["-m", "seed=0,1", *fast, f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = rows(sweep_dir / "summary_seeds.csv")
    steps = [json.loads(p.read_text())["step"] for p in sorted(sweep_dir.glob("*/metrics.json"))]
    assert len(steps) == 2 and all(0 < s <= 200 and s % 10 == 0 for s in steps)
    if row["solved"] == "2":
        assert float(row["solved_step_mean"]) == statistics.fmean(steps)
    assert "Over seeds, per setting:" in result.stdout
    assert not math.isnan(float(row["val/loss_mean"]))


def test_a_log_scaled_seed_sweep_draws_without_warnings_and_prints_align_best(tmp_path, capsys):
    """optim.lr over two decades, three seeds each, every seed of a setting the same: panels on a log axis whose
    settings have no spread. Drawn without matplotlib's warnings; the tables show align/best, the alignment metric,
    and the closing line the TensorBoard command that shows every frame."""
    import warnings

    for number, (lr, seed) in enumerate((lr, seed) for lr in ("1e-4", "1e-3", "1e-2") for seed in range(3)):
        job_dir(tmp_path, number, [f"optim.lr={lr}", f"seed={seed}"],
                {"val/loss": 0.01, "val/seq_acc": 1.0, "align/best": 0.97, "step": 100})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary.summarize(tmp_path)
    printed = capsys.readouterr().out
    head, settings = printed.split("Over seeds, per setting:\n")
    assert "align/best" in head.splitlines()[1].split() and "align/best" in settings.splitlines()[0].split()
    assert "0.97 ± 0 [0.97, 0.97]" in settings
    assert f"Compare them with:  tensorboard --logdir {tmp_path} --samples_per_plugin images=1000\n" in printed
