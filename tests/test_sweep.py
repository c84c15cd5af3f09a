"""A multirun end to end with the basic launcher: one directory per job named by its overrides, event files, the
HPARAMS data read back, summary.csv and summary.png, a failing job isolated, and a 2-process (ddp_spawn) job
inside the sweep whose ranks trained the same hyperparameters on different batches."""

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "scripts" / "train.py"
SUMMARIZE = ROOT / "scripts" / "summarize_sweep.py"  # run forked from the session's server (tests/script_runs.py)
# Short real runs: 20 steps, validation at 10 and 20, no images.
TINY = ["trainer.max_steps=20", "trainer.val_every_n_steps=10", "trainer.stop_at=null", "logging=off",
        "data.val_size=64"]


def train(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    # cwd: a tmp dir, so that a run or a rank writing to the default outputs/ would show there (and not in the repo)
    return subprocess.run([sys.executable, str(TRAIN), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def train_forked(script_runs, args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """train(args), forked from the session's process that has made torch's imports (tests/script_runs.py): for a
    sweep whose jobs run in its own process (the basic launcher, Optuna's), which would make them again."""
    (result,) = script_runs.run(TRAIN, [args], cwd, timeout=timeout)
    return result


def hparams(run_dir: Path) -> tuple[dict, dict]:
    """(hyperparameters, final metrics) as TensorBoard's HPARAMS tab reads them from the run's event files."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    values = {}
    for name, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        values[name] = getattr(value, kind) if kind else None
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = {}
    for info in experiment.metric_infos:  # the metrics the tab shows: scalars of the same name in the run
        tag = info.name.tag
        metrics[tag] = events.Scalars(tag)[-1].value
    return values, metrics


def rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_multirun_summary_failure_and_ddp(tmp_path, script_runs):
    sweep = tmp_path / "sweep"
    # 4 jobs: heads=3 does not divide dim=32, so 2 fail at once; device=cpu_ddp trains with 2 processes.
    args = ["-m", "model.heads=1,3", "device=cpu,cpu_ddp", *TINY, f"hydra.sweep.dir={sweep}"]
    result = train_forked(script_runs, args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "outputs").exists()  # no rank re-ran the sweep into a directory of its own

    # one directory per job, named by its overrides (Hydra sorts them)
    dirs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert dirs == sorted(",".join(sorted([f"model.heads={h}", f"device={d}", *TINY])) for h in (1, 3) for d in ("cpu", "cpu_ddp"))

    table = {(r["model.heads"], r["device"]): r for r in rows(sweep / "summary.csv")}
    assert set(table) == {("1", "cpu"), ("1", "cpu_ddp"), ("3", "cpu"), ("3", "cpu_ddp")}
    for device in ("cpu", "cpu_ddp"):
        failed = table[("3", device)]
        assert failed["status"] == "failed"
        assert "model.heads must divide model.dim=32" in failed["error"]
        assert failed["val/seq_acc"] == ""
        assert json.loads((sweep / failed["run_dir"] / "job.json").read_text())["status"] == "failed"

        row = table[("1", device)]
        run_dir = sweep / row["run_dir"]
        assert row["status"] == "ok" and float(row["wall_s"]) > 0
        assert list(run_dir.glob("events.out.tfevents.*")) and (run_dir / "checkpoints" / "last.ckpt").is_file()
        final = json.loads((run_dir / "metrics.json").read_text())
        for name, value in final.items():  # every metric of metrics.json is a column, align/... included
            assert float(row[name]) == pytest.approx(value)
        assert final["val/loss"] < math.log(10)  # 20 steps learned something: below chance (10 tokens)

        # HPARAMS: the job's hyperparameters and its final metrics, as TensorBoard shows them
        values, metrics = hparams(run_dir)
        assert values["model/heads"] == 1 and values["model/dim"] == 32
        assert values["device/devices"] == (2 if device == "cpu_ddp" else 1)
        assert set(final) - {"step"} <= set(metrics)  # the step the metrics are of is metrics.json's alone
        assert metrics["val/seq_acc"] == pytest.approx(final["val/seq_acc"])
        assert metrics["val/loss"] == pytest.approx(final["val/loss"])

    # the 2-process job: both ranks trained what the job says, on batches of their own
    ranks = [json.loads(p.read_text()) for p in sorted((sweep / table[("1", "cpu_ddp")]["run_dir"]).glob("ranks/*.json"))]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    same = ["dim", "heads", "layers", "lr", "weight_decay", "batch_size", "seed", "max_steps"]
    assert [r[k] for k in same for r in ranks[:1]] == [r[k] for k in same for r in ranks[1:]]
    assert ranks[0]["heads"] == 1 and ranks[0]["max_steps"] == 20
    assert ranks[0]["first_batch"] != ranks[1]["first_batch"]

    assert (sweep / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "4 jobs, 2 failed" in result.stdout
    assert "model.heads must divide" in result.stdout  # the table names each failure
    # The console of a sweep: the devices said by its first job only (each job's train.log keeps them), no progress
    # line redrawn with \r into a pipe, and the TensorBoard command that shows every frame.
    assert result.stdout.count("GPU available:") == 1
    assert all("GPU available:" in (sweep / r["run_dir"] / "train.log").read_text() for r in table.values() if r["status"] == "ok")
    assert "\r" not in result.stdout
    assert f"tensorboard --logdir {sweep} --samples_per_plugin images=1000" in result.stdout

    # scripts/summarize_sweep.py makes the same summary again from the directory alone
    before = (sweep / "summary.csv").read_text()
    (sweep / "summary.csv").unlink()
    (sweep / "summary.png").unlink()
    (again,) = script_runs.run(SUMMARIZE, [[str(sweep)]], tmp_path, timeout=60)
    assert again.returncode == 0, again.stderr
    assert (sweep / "summary.csv").read_text() == before and (sweep / "summary.png").is_file()


def test_summarize_sweep_bad_dir(tmp_path, script_runs):
    (result,) = script_runs.run(SUMMARIZE, [[str(tmp_path)]], tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: no runs found in {tmp_path}: expected job directories "
                                                  "holding .hydra/ (a multirun's sweep dir)"]


def test_launcher_and_search_configs_compose():
    """The SLURM launcher and the Optuna search space as Hydra composes them (no cluster here: submitit_local runs
    the same launcher code in tests/test_sweep_launchers.py)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        slurm = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
        search = compose("train", overrides=["+hparams_search=lr_dim_heads"], return_hydra_config=True)
    launcher = slurm.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.tasks_per_node == 1 and launcher.gpus_per_node == 1 and launcher.partition is None
    sweeper = search.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert search.optimized_metric == "val/seq_acc"
    assert set(sweeper.params) == {"optim.lr", "model.dim", "model.heads"}
    # every (dim, heads) pair of the search space is valid: heads divides dim
    dims, heads = ([int(v) for v in re.findall(r"\d+", sweeper.params[k])] for k in ("model.dim", "model.heads"))
    assert dims == [16, 32, 64] and heads == [1, 2, 4]
    assert all(d % h == 0 for d in dims for h in heads)
