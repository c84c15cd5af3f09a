"""Reproducibility, going on from a checkpoint, safe checkpoints, divergence and a disk that fills up mid-run.

Most runs here are trained in this process through attnlab.train.run (a subprocess would pay Lightning's import
again); the two that must fail as a user sees it (exit code, one line) are real scripts/train.py subprocesses."""

import json
import math
import signal
import subprocess
import time
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from attnlab import signals, tags
from attnlab.config import ConfigError
from attnlab.guards import Diverged, Interrupted
from attnlab.train import run

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "device=cpu", "data.batch_size=32", "data.val_size=64", "model.dim=16", "trainer.max_steps=40",
    "trainer.val_every_n_steps=10", "trainer.stop_at=null", "logging.every_n_steps=5",
    "logging.images_every_n_steps=20", "logging.progress_bar=false",
    "optim.schedule=cosine",  # an lr that changes every step: a resumed run must restore the scheduler too
]


def train(run_dir: Path, *overrides: str, callbacks=()) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*SMALL, *overrides])
    return run(cfg, run_dir, callbacks)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


class Crash(L.Callback):
    """Fault injection: the run dies at step `at`, with no chance to save (as a killed process)."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.at:
            raise RuntimeError("simulated crash")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, failing_runs) -> dict:
    tmp = tmp_path_factory.mktemp("reliability")  # (failing_runs first: they train on the other core meanwhile)
    dirs = {name: tmp / name for name in ("seed0", "seed0_again", "seed1", "crashed")}
    train(dirs["seed0"], "seed=0")
    train(dirs["seed0_again"], "seed=0")
    train(dirs["seed1"], "seed=1")
    # Crash at step 27, after the checkpoint of the validation at step 20 and the scalars of step 25; then go on
    # in the same directory from that checkpoint, as resume= does.
    checkpoint = dirs["crashed"] / "checkpoints" / "last.ckpt"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(dirs["crashed"], "seed=0", callbacks=[Crash(at=27)])
    crashed = {"step": torch.load(checkpoint, weights_only=True)["global_step"], "metrics": (dirs["crashed"] / "metrics.json").exists()}
    crashed["curve"] = [e.step for e in EventAccumulator(str(dirs["crashed"])).Reload().Scalars(tags.metric("train", "loss"))]
    # TensorBoard reads a run's event files in the order of their names: the second each was made, then host, pid
    # and a counter compared as text (".10" before ".9"). A real resume starts seconds later; here, in this same
    # process, start it in a later second than the crashed run's file, or the two may be read the wrong way round.
    time.sleep(1.01 - time.time() % 1)
    train(dirs["crashed"], "seed=0", f"ckpt_path={checkpoint}")
    return {**dirs, "after_crash": crashed}


def test_same_seed_gives_identical_metrics_and_weights(runs):
    assert metrics(runs["seed0"]) == metrics(runs["seed0_again"])
    ours, theirs = weights(runs["seed0"]), weights(runs["seed0_again"])
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_different_seeds_differ(runs):
    assert metrics(runs["seed0"]) != metrics(runs["seed1"])
    ours, theirs = weights(runs["seed0"]), weights(runs["seed1"])
    assert all(not torch.equal(ours[k], theirs[k]) for k in ours)  # the initial weights differ, then the data


def test_after_a_crash_the_run_goes_on_from_its_last_checkpoint_as_if_never_stopped(runs):
    # The crash lost the steps after the last validation's checkpoint, and nothing looked finished.
    assert runs["after_crash"] == {"step": 20, "metrics": False, "curve": [4, 9, 14, 19, 24]}
    assert metrics(runs["crashed"]) == metrics(runs["seed0"])
    ours, theirs = weights(runs["crashed"]), weights(runs["seed0"])
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    # In TensorBoard the run reads as one: what the crashed process logged after its checkpoint (step 24, Lightning
    # logs step s at s-1) is hidden (purge_step), the steps logged again replace it, nothing twice, nothing missing.
    for tag in tags.metric("train", "loss"), tags.metric("val", "seq_acc"):
        read = lambda d: [(e.step, e.value) for e in EventAccumulator(str(d), size_guidance={"scalars": 0}).Reload().Scalars(tag)]  # noqa: E731
        assert read(runs["crashed"]) == read(runs["seed0"]), tag


def plain(value, where: str = "checkpoint") -> None:
    """Fails unless `value` is built of tensors and plain values only."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, (str, int)), f"{where}: key {key!r}"
            plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            plain(item, f"{where}[{i}]")
    else:
        assert value is None or isinstance(value, (torch.Tensor, bool, int, float, str)), f"{where}: {type(value)}"


@pytest.mark.parametrize("name", ["seed0", "crashed"])
def test_checkpoints_hold_tensors_and_plain_values_only(runs, name):
    # weights_only=True refuses anything but tensors and plain containers/values: nothing runs code on load.
    checkpoint = torch.load(runs[name] / "checkpoints" / "last.ckpt", weights_only=True)
    plain(checkpoint)
    # What Lightning puts in beyond the weights: loops, callbacks' states, optimiser, lr scheduler (its lambda is
    # a plain function, so it is left out, not pickled), the training data generator's state.
    assert {"state_dict", "loops", "callbacks", "optimizer_states", "lr_schedulers"} <= checkpoint.keys()
    assert checkpoint["lr_schedulers"][0]["lr_lambdas"] == [None]
    assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["generator"].dtype == torch.uint8


def test_checkpoint_of_another_model_is_refused_before_training(runs, tmp_path):
    with pytest.raises(ConfigError, match=r"ckpt_path: .* holds model\.\S+ of shape \[\d+, 16\], this config makes \[\d+, 32\]"):
        train(tmp_path, "model.dim=32", f"ckpt_path={runs['seed0'] / 'checkpoints' / 'last.ckpt'}")
    assert not list(tmp_path.iterdir())  # nothing written


class PoisonWeights(L.Callback):
    """Fault injection: a NaN in the embedding before step `at`, as a blow-up would leave it."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.at:
            with torch.no_grad():
                next(module.parameters()).view(-1)[0] = math.nan


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(Diverged) as caught:
        train(tmp_path, "trainer.max_steps=30", callbacks=[PoisonWeights(at=23)])
    message = str(caught.value)
    # Caught at the next logging step (every 5): the step, the last finite loss, a hint, the checkpoint kept.
    assert "train/loss is nan at step 25" in message and "last finite train/loss:" in message and "at step 20" in message
    assert "lower optim.lr (now 0.02)" in message
    assert f"{tmp_path / 'checkpoints' / 'last.ckpt'} keeps the weights of step 20" in message
    kept = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert kept["global_step"] == 20 and all(torch.isfinite(t).all() for t in kept["state_dict"].values())
    assert not (tmp_path / "metrics.json").exists()


def test_a_job_signalled_while_it_started_stops_before_its_first_step(tmp_path, monkeypatch):
    # A process running a sweep's jobs that got SIGTERM while this job was being built (attnlab.signals noted it):
    # no step is trained, and the checkpoint it leaves resumes the job from its start.
    monkeypatch.setattr(signals, "_received", [signal.SIGTERM])
    with pytest.raises(Interrupted) as caught:
        train(tmp_path, "seed=0")
    assert (caught.value.signum, caught.value.step, caught.value.saved_step) == (signal.SIGTERM, 0, 0)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 0
    assert not (tmp_path / "metrics.json").exists()


# In the child: no file may grow past 60 kB, as on a disk that fills up (the event file of 200 steps is ~120 kB, a
# checkpoint ~37 kB); a write past it fails with EFBIG (Python ignores SIGXFSZ, so the write returns an error instead
# of killing the process). Its stdout and stderr files are held to it too: a few lines.
FILE_SIZE_LIMIT = {"RLIMIT_FSIZE": 60_000}


@pytest.fixture(scope="module")
def failing_runs(tmp_path_factory, script_runs) -> dict:
    """Two scripts/train.py runs that fail as a user sees it, started at once and read when a test needs them:
    processes of their own, forked from the session's server that has made torch's imports (tests/script_runs.py)."""
    tmp = tmp_path_factory.mktemp("failing")

    def start(name, *overrides, limits=None):
        args = [*SMALL, *overrides, f"hydra.run.dir={tmp / name}"]
        return script_runs.start(ROOT / "scripts" / "train.py", args, ROOT, limits=limits)

    return {
        "tmp": tmp,
        "disk_full": start("disk_full", "trainer.max_steps=200", limits=FILE_SIZE_LIMIT),
        "diverged": start("diverged", "optim.lr=1e30"),
    }


def finished(failing_runs: dict, name: str) -> subprocess.CompletedProcess:
    process = failing_runs[name]
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_diverged_run_exits_with_one_line(failing_runs):
    result, run_dir = finished(failing_runs, "diverged"), failing_runs["tmp"] / "diverged"
    assert result.returncode == 3, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert errors[0].startswith("error: training diverged: train/loss is nan at step ") and "optim.lr (now 1e+30)" in errors[0]
    assert not (run_dir / "metrics.json").exists()


def test_disk_full_mid_run_is_one_clear_error_and_keeps_what_was_written(failing_runs):
    result, run_dir = finished(failing_runs, "disk_full"), failing_runs["tmp"] / "disk_full"
    assert result.returncode == 4, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: writing the run in {run_dir} failed: [Errno 27] File too large. What was written before is kept."]
    assert "Traceback" not in result.stderr
    # What was written before the disk filled stays readable: the event file up to the failure, the last checkpoint.
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    logged = [e.step for e in events.Scalars(tags.metric("train", "loss"))]
    assert logged and logged[0] == 4 and max(logged) < 199
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert 10 <= checkpoint["global_step"] < 200 and all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    assert not (run_dir / "metrics.json").exists()
