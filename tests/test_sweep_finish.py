"""Finishing a stopped sweep: `python scripts/train.py -m resume=SWEEP_DIR` goes on with every interrupted job in
place, runs every job that never started (with or without a directory), leaves finished jobs alone, under the
sweep's own launcher, and ends with the summary of the whole sweep; job.json says each job's last state."""

import json
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from test_sweep import TRAIN, rows, train_forked

STEPS = 150
SWEEP = ["device=cpu", "seed=0,1,2", "data.batch_size=32", "data.val_size=64", "model.dim=16", "logging=off",
         f"trainer.max_steps={STEPS}", "trainer.val_every_n_steps=10", "trainer.stop_at=null"]


def stopped_sweep(script_runs, tmp_path: Path, launcher: list[str]) -> Path:
    """The sweep, stopped by SIGINT once its first job (its group, stacked) has saved a checkpoint."""
    sweep = tmp_path / "sweep"
    process = script_runs.start(TRAIN, ["-m", *launcher, *SWEEP, f"hydra.sweep.dir={sweep}"], tmp_path)
    deadline = time.monotonic() + 240
    while not list(sweep.glob("*/checkpoints/last.ckpt")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=240)
    assert process.returncode == 128 + signal.SIGINT, err[-3000:]
    assert f"Finish the sweep (every job left to do, in place):  python scripts/train.py -m resume={sweep}" in _
    return sweep


def records(sweep: Path) -> dict[str, dict]:
    """job.json by seed."""
    found = [json.loads(p.read_text()) for p in sweep.glob("*/job.json")]
    return {next(o for o in r["overrides"] if o.startswith("seed=")): r for r in found}


def job_dir(sweep: Path, seed: int) -> Path:
    (found,) = [p for p in sweep.iterdir() if f"seed={seed}," in p.name]
    return found


def finished_as_one(sweep: Path, result, started: dict) -> None:
    """Every job ok, numbered as first, trained to the end; the summary of all three."""
    assert result.returncode == 0, result.stderr[-3000:]
    done = records(sweep)
    assert {s: (r["job"], r["status"]) for s, r in done.items()} == {f"seed={i}": (i, "ok") for i in range(3)}
    for seed in range(3):  # each job's overrides as they were: not the ckpt_path it was finished with
        assert done[f"seed={seed}"]["overrides"] == started[f"seed={seed}"]["overrides"]
        run_dir = job_dir(sweep, seed)
        assert json.loads((run_dir / "metrics.json").read_text())["step"] == STEPS
        assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == STEPS
    assert len(list(sweep.iterdir())) == 3 + 4  # no directory more (multirun.yaml, summary.csv, .png, _seeds.csv)
    assert "3 jobs, 0 failed." in result.stdout and [r["status"] for r in rows(sweep / "summary.csv")] == ["ok"] * 3
    assert "Finish the sweep" not in result.stdout


@pytest.mark.slow
def test_a_stopped_sweep_is_finished_in_place(tmp_path, script_runs):
    sweep = stopped_sweep(script_runs, tmp_path, [])
    started = records(sweep)
    assert {s: r["status"] for s, r in started.items()} == {"seed=0": "interrupted", "seed=1": "not started",
                                                             "seed=2": "not started"}
    stopped_at = torch.load(job_dir(sweep, 0) / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 10 <= stopped_at < STEPS
    # As if the sweep's process had been killed before job 2 began: no directory for it at all.
    shutil.rmtree(job_dir(sweep, 2))
    started["seed=2"] = {"overrides": [o.replace("seed=0,1,2", "seed=2") for o in SWEEP]}

    result = train_forked(script_runs, ["-m", f"resume={sweep}"], tmp_path)
    finished_as_one(sweep, result, started)
    said = result.stdout + result.stderr
    assert "1 job(s) go on from their checkpoint, 2 start, 0 finished and 0 failed are left as they are" in said
    assert f"Trained {STEPS - stopped_at} steps (from step {stopped_at} to {STEPS})" in said  # job 0, in place
    assert said.count(f"Trained {STEPS} steps in") == 2  # jobs 1 and 2, from the start
    # job 0's own Hydra files stay; the finishing part's beside them
    assert (job_dir(sweep, 0) / ".hydra" / "resume" / "overrides.yaml").is_file()

    again = train_forked(script_runs, ["-m", f"resume={sweep}"], tmp_path)
    assert again.returncode == 0 and again.stdout.strip().splitlines() == [
        f"{sweep}: nothing to finish: its 3 jobs have ended (3 ok)"], again.stdout + again.stderr


@pytest.mark.slow
def test_a_stopped_stacked_sweep_is_finished_with_a_job_resumed_alone_before(tmp_path, script_runs):
    """Stacked: the three members stopped together; one resumed alone with resume=RUN_DIR (its job.json then says
    ok, and finishing leaves it alone), the other two finished by -m resume=SWEEP_DIR, each from its checkpoint."""
    # in the sweep's process, one group of three (on two workers the third would be alone in the second)
    sweep = stopped_sweep(script_runs, tmp_path, ["hydra/launcher=stacked", "hydra.launcher.n_jobs=1"])
    started = records(sweep)
    assert {r["status"] for r in started.values()} == {"interrupted"}
    alone = train_forked(script_runs, [f"resume={job_dir(sweep, 1)}"], tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert records(sweep)["seed=1"]["status"] == "ok"

    result = train_forked(script_runs, ["-m", f"resume={sweep}"], tmp_path)
    finished_as_one(sweep, result, started)
    said = result.stdout + result.stderr
    assert "2 job(s) go on from their checkpoint, 0 start, 1 finished and 0 failed are left as they are" in said
    assert said.count(" alone (it goes on from a checkpoint (ckpt_path)):") == 2
