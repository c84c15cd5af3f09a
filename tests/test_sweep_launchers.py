"""Sweeps under the other launchers and the Optuna sweeper: joblib (jobs side by side, threads shared),
submitit_local (each job a process of its own, as on SLURM), each with a 2-process (ddp_spawn) job and a failing
one; a joblib sweep stopped by SIGTERM; Optuna with 3 trials into a sqlite study."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from test_sweep import TINY, TRAIN, rows, train_forked

SAME = ["dim", "heads", "layers", "lr", "weight_decay", "batch_size", "seed", "max_steps", "world_size", "threads"]


def check_ddp_and_failure(sweep: Path) -> dict:
    """heads=2 trained with 2 ranks that hold the same hyperparameters and draw different batches; heads=3 failed
    and is in the summary with its error. Returns the ranks' records."""
    table = {r["model.heads"]: r for r in rows(sweep / "summary.csv")}
    assert set(table) == {"2", "3"}
    assert table["3"]["status"] == "failed" and "model.heads must divide model.dim=32" in table["3"]["error"]
    ok = table["2"]
    assert ok["status"] == "ok" and float(ok["val/loss"]) == pytest.approx(
        json.loads((sweep / ok["run_dir"] / "metrics.json").read_text())["val/loss"]
    )
    ranks = [json.loads(p.read_text()) for p in sorted((sweep / ok["run_dir"] / "ranks").glob("rank*.json"))]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert {k: ranks[0][k] for k in SAME} == {k: ranks[1][k] for k in SAME}
    assert ranks[0]["heads"] == 2 and ranks[0]["world_size"] == 2 and ranks[0]["max_steps"] == 20
    assert ranks[0]["first_batch"] != ranks[1]["first_batch"]
    return ranks


# The launcher's own arguments for each sweep of a 2-process job and a failing one (device=cpu_ddp, heads 2 and 3).
DDP_SWEEPS = {
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local"],
}


@pytest.fixture(scope="module")
def ddp_sweeps(tmp_path_factory) -> dict:
    """The DDP_SWEEPS, started together and read by their tests. Each spends most of its time starting processes
    one after the other (the sweep, its jobs' processes, their ranks), so that side by side they keep both cores
    busy. Each runs in a directory of its own (cwd), where a rank writing to the default outputs/ would show."""
    started = {}
    for name, launcher in DDP_SWEEPS.items():
        cwd = tmp_path_factory.mktemp(name)
        args = [sys.executable, str(TRAIN), "-m", *launcher, "device=cpu_ddp", "model.heads=2,3", *TINY,
                f"hydra.sweep.dir={cwd / 'sweep'}"]
        with (cwd / "stdout").open("w") as stdout, (cwd / "stderr").open("w") as stderr:
            started[name] = cwd, subprocess.Popen(args, cwd=cwd, stdout=stdout, stderr=stderr, start_new_session=True)
    try:
        yield started
    finally:  # a sweep a failed test left running: all of its processes
        for _, process in started.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def finished(ddp_sweeps: dict, name: str) -> tuple[Path, subprocess.CompletedProcess]:
    """The sweep's directory (cwd) and how it ended, once it has."""
    cwd, process = ddp_sweeps[name]
    process.wait(timeout=300)
    return cwd, subprocess.CompletedProcess(process.args, process.returncode, (cwd / "stdout").read_text(),
                                            (cwd / "stderr").read_text())


@pytest.mark.slow
def test_joblib_parallel_jobs_with_ddp(ddp_sweeps):
    cwd, result = finished(ddp_sweeps, "joblib")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    assert not (cwd / "outputs").exists()
    ranks = check_ddp_and_failure(cwd / "sweep")
    # 2 jobs side by side, 2 processes each: each process gets its share of this machine's cores
    assert ranks[0]["threads"] == max(1, len(os.sched_getaffinity(0)) // 2 // 2)


@pytest.mark.slow
def test_submitit_local_with_ddp(ddp_sweeps):
    cwd, result = finished(ddp_sweeps, "submitit_local")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (cwd / "outputs").exists()
    assert len(list((cwd / "sweep" / ".submitit").glob("*/*_result.pkl"))) == 2  # submitit ran each job in a process
    check_ddp_and_failure(cwd / "sweep")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads the sweep's processes from /proc")
def test_sigterm_to_a_joblib_sweep_stops_it_as_ctrl_c_does(tmp_path, script_runs):
    """kill of the sweep's process group (a user's kill, a scheduler): the two running jobs save their checkpoints
    at the step they reached, the third does not start, the summary says so, and no process of the sweep is left."""
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "device=cpu", "seed=0,1,2",
            "trainer.max_steps=100000", "trainer.val_every_n_steps=10", "trainer.stop_at=null", "logging=off",
            "data.val_size=64", f"hydra.sweep.dir={sweep}"]
    # forked from the session's server (tests/script_runs.py), leading a process group of its own as the sweep a
    # user starts from a shell does
    process = script_runs.start(TRAIN, args, tmp_path, new_session=True)
    # signalled once both workers are training (each job past step 10)
    out, stderr, left, took = process.stop_group(
        lambda: len(list(sweep.glob("*/checkpoints/last.ckpt"))) >= 2, within=200, timeout=60)
    assert not left, f"still running {took:.0f} s after SIGTERM: {left}"
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]

    table = {r["seed"]: r for r in rows(sweep / "summary.csv")}
    assert sorted(r["status"] for r in table.values()) == ["interrupted", "interrupted", "not started"]
    assert "3 jobs, 2 interrupted, 1 not started." in out
    assert not list(sweep.glob("*/metrics.json"))  # no job trained on to the end
    stopped = re.findall(r"Training stopped by SIGTERM at step (\d+); checkpoint saved: (\S+)", stderr)
    assert len(stopped) == 2
    for step, checkpoint in stopped:  # each saved at the step it stopped at: resumed, it goes on from there
        assert torch.load(checkpoint, weights_only=True)["global_step"] == int(step) >= 10
    waiting = next(r for r in table.values() if r["status"] == "not started")
    assert waiting["error"] == "the sweep was stopped by SIGTERM before this job began"
    assert not list((sweep / waiting["run_dir"]).glob("events.out*"))


IDLE_WORKERS = """
import os, signal, time
from joblib import Parallel, delayed
from omegaconf import OmegaConf
from attnlab import signals

launcher = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
signals.SweepSignals().on_multirun_start(OmegaConf.create({"hydra": {"launcher": {"_target_": launcher}}}))
with Parallel(n_jobs=2) as parallel:
    workers = set()
    while len(workers) < 2:  # both started (on a busy machine one may take all the jobs of a round)
        workers |= set(parallel(delayed(lambda: (time.sleep(0.1), os.getpid())[1])() for _ in range(4)))
    for pid in workers:  # idle now, as a worker with no job left when the sweep is stopped
        os.kill(pid, signal.SIGTERM)
    time.sleep(0.5)
    after = parallel(delayed(lambda: (time.sleep(0.1), os.getpid(), signals.received())[1:])() for _ in range(8))
print(len(workers), {pid for pid, _ in after} <= workers, {signal.Signals(s).name if s else None for _, s in after})
"""


def test_joblib_workers_listen_from_their_start():
    """A joblib worker that has no job when SIGTERM comes lives on (the jobs after run in the same workers),
    knowing the sweep is stopped (its next job would not start): it listens from its start. Had it ended, loky
    would take it for a crash and kill the busy workers at once, in the middle of saving their checkpoints."""
    result = subprocess.run([sys.executable, "-c", IDLE_WORKERS], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[0] == "2 True {'SIGTERM'}"


# The shipped search space with heads 3 allowed, which divides none of the dims: those trials fail.
WITH_FAILURES = """# @package _global_
defaults:
  - lr_dim_heads
hydra:
  sweeper:
    params:
      model.heads: choice(2, 3)
"""


@pytest.mark.slow
def test_optuna_three_trials(tmp_path, script_runs):
    optuna = pytest.importorskip("optuna")
    sweep, db, conf = tmp_path / "sweep", tmp_path / "study.db", tmp_path / "conf" / "hparams_search"
    conf.mkdir(parents=True)
    (conf / "with_failures.yaml").write_text(WITH_FAILURES)
    # val/loss, not val/seq_acc: after 20 steps every trial's seq_acc is still 0, the loss differs
    args = ["-m", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "+hparams_search=with_failures",
            "hydra.sweeper.n_trials=4", "optimized_metric=val/loss", "hydra.sweeper.direction=minimize",
            f"hydra.sweeper.storage=sqlite:///{db}", "hydra.sweeper.study_name=test", *TINY, f"hydra.sweep.dir={sweep}"]
    result = train_forked(script_runs, args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "setup plugin" not in result.stdout + result.stderr  # the study storage's alembic, at INFO

    table = rows(sweep / "summary.csv")
    assert len(table) == 4
    assert all(Path(r["run_dir"]).name.startswith(f"trial{r['job']}_") for r in table)
    for r in table:  # the sampled point is inside the search space; heads=3 failed, with its error
        assert 1e-4 <= float(r["optim.lr"]) <= 3e-2 and int(r["model.dim"]) in (16, 32, 64)
        assert r["status"] == ("ok" if r["model.heads"] == "2" else "failed")
        assert ("model.heads must divide" in r["error"]) if r["status"] == "failed" else r["error"] == ""
    ok = [r for r in table if r["status"] == "ok"]
    assert 0 < len(ok) < 4, "the seeded sampler should draw both heads"

    best = OmegaConf.load(sweep / "optimization_results.yaml")
    losses = {r["job"]: float(r["val/loss"]) for r in ok}
    assert best.best_value == pytest.approx(min(losses.values()))
    best_row = next(r for r in ok if float(r["val/loss"]) == pytest.approx(best.best_value))
    assert int(best.best_params["model.dim"]) == int(best_row["model.dim"])

    # the study in sqlite: the failed jobs are FAIL trials, the others valued with their run's metrics.json
    study = optuna.load_study(study_name="test", storage=f"sqlite:///{db}")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE" if r["status"] == "ok" else "FAIL" for r in table]
    assert sorted(t.value for t in trials if t.value is not None) == pytest.approx(sorted(losses.values()))

    # The same command again adds trials to the study, at points it has not tried (a sampler seeded alike would
    # draw the first trials' points again).
    more = [a.replace("n_trials=4", "n_trials=2").replace(str(sweep), str(tmp_path / "more")) for a in args]
    again = train_forked(script_runs, more, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    points = [(t.params["optim.lr"], t.params["model.dim"]) for t in optuna.load_study(study_name="test",
                                                                                        storage=f"sqlite:///{db}").trials]
    assert len(points) == 6 and not set(points[4:]) & set(points[:4]), points


def test_optuna_added_trials_are_seeded_by_the_trials_the_study_holds(tmp_path):
    """The search space's sampler seed, as Hydra resolves it when it builds the sweeper: 0 for a new study (the
    first trials as before), the number of trials a stored study already holds when the same command runs again,
    so the trials it adds are not the ones it began with."""
    optuna = pytest.importorskip("optuna")
    from hydra import compose, initialize_config_dir

    import attnlab.sweep  # noqa: F401  (registers the resolver, as scripts/train.py imports it)

    storage = f"sqlite:///{tmp_path / 'study.db'}"

    def seed(*overrides: str) -> int:
        with initialize_config_dir(config_dir=str(Path(TRAIN).parents[1] / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=["+hparams_search=lr_dim_heads", *overrides], return_hydra_config=True)
        return cfg.hydra.sweeper.sampler.seed

    stored = [f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=added"]
    assert seed() == 0 and seed(*stored) == 0
    study = optuna.create_study(study_name="added", storage=storage)
    for value in (0.1, 0.2, 0.3):
        trial = study.ask()
        study.tell(trial, value)
    assert seed(*stored) == 3
    assert seed(f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=another") == 0


@pytest.mark.skipif(not (Path(TRAIN).parents[1] / ".git").exists(), reason="needs the git checkout")
def test_a_study_stored_where_the_command_ran_is_not_left_for_git_to_track():
    root = Path(TRAIN).parents[1]
    for path in ("study.db", "outputs/study.db"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=root).returncode == 0, path
