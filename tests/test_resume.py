"""Interruption and resume, with real signals to real scripts/train.py processes: SIGINT or SIGTERM saves a
checkpoint and says how to resume; resuming goes on from the same step, in the same run directory and TensorBoard
run, and ends with the metrics and weights of a run that was never stopped."""

import json
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from attnlab import tags

ROOT = Path(__file__).resolve().parents[1]
STEPS = 80
RUN = [
    "device=cpu", "data.batch_size=32", "data.val_size=64", "model.dim=16", f"trainer.max_steps={STEPS}",
    "trainer.val_every_n_steps=10", "trainer.stop_at=null", "logging.every_n_steps=5",
    "logging.images_every_n_steps=20", "logging.progress_bar=false",
]


def train(script_runs, *args: str):
    """scripts/train.py ARGS started, a process of its own forked from the session's server that has made torch's
    imports (tests/script_runs.py): a Popen-like handle, with the pid the signals go to."""
    return script_runs.start(Path("scripts/train.py"), list(args), ROOT)  # as a user in the repository


def interrupt(script_runs, run_dir: Path, signum: int) -> dict:
    """Start a run, send `signum` once it has saved its first checkpoint (so it is mid-training), and record
    what it left."""
    process = train(script_runs, *RUN, f"hydra.run.dir={run_dir}")
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 180
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signum)
    out, err = process.communicate(timeout=180)
    saved = torch.load(checkpoint, weights_only=True)
    return {
        "code": process.returncode, "stderr": err, "step": saved["global_step"],
        "metrics_written": (run_dir / "metrics.json").exists(), "files": sorted(p.name for p in run_dir.iterdir()),
    }


def finish(process) -> subprocess.CompletedProcess:
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err[-3000:]
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, script_runs) -> dict:
    tmp = tmp_path_factory.mktemp("resume")
    dirs = {name: tmp / name for name in ("whole", "sigint", "sigterm")}

    def stop_then_resume():
        # Go on with the SIGINT run in its own directory; other overrides on the line go on top. (ckpt_path=,
        # which resume= builds on, is also checked in process, after a crash, by tests/test_reliability.py.)
        stopped = interrupt(script_runs, dirs["sigint"], signal.SIGINT)
        return stopped, finish(train(script_runs, f"resume={dirs['sigint']}", "logging.progress_bar=false"))

    with ThreadPoolExecutor(2) as pool:
        sigint = pool.submit(stop_then_resume)
        sigterm = pool.submit(interrupt, script_runs, dirs["sigterm"], signal.SIGTERM)
        # Meanwhile the run never stopped, to compare with.
        whole = finish(train(script_runs, *RUN, f"hydra.run.dir={dirs['whole']}"))
        (stopped, resumed), stopped_term = sigint.result(), sigterm.result()
    return {"dirs": dirs, "stopped": {"sigint": stopped, "sigterm": stopped_term}, "whole": whole, "resumed": resumed}


@pytest.mark.parametrize("name, signum", [("sigint", signal.SIGINT), ("sigterm", signal.SIGTERM)])
def test_signal_saves_a_checkpoint_and_says_how_to_resume(runs, name, signum):
    stopped, run_dir = runs["stopped"][name], runs["dirs"][name]
    assert stopped["code"] == 128 + signum, stopped["stderr"][-3000:]
    assert 10 <= stopped["step"] < STEPS  # stopped mid-training, at the step its checkpoint holds
    said = stopped["stderr"]
    assert f"{signal.Signals(signum).name} received: stopping after this step and saving a checkpoint" in said
    assert f"stopped by {signal.Signals(signum).name} at step {stopped['step']}" in said
    assert f"Resume with:  python scripts/train.py resume={run_dir}" in said
    assert "Traceback" not in said
    # A stopped run does not look finished: no metrics.json until it is resumed to the end.
    assert not stopped["metrics_written"] and "checkpoints" in stopped["files"]


def test_resumed_run_ends_as_if_never_stopped(runs):
    whole, resumed = runs["dirs"]["whole"], runs["dirs"]["sigint"]
    assert json.loads((resumed / "metrics.json").read_text()) == json.loads((whole / "metrics.json").read_text())
    ours = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    theirs = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=True)
    assert ours["global_step"] == theirs["global_step"] == STEPS
    assert ours["state_dict"].keys() == theirs["state_dict"].keys()
    for key, tensor in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][key], tensor), key


def test_a_resumed_run_is_as_quiet_as_a_fresh_one_and_counts_the_steps_it_trained(runs):
    step, resumed = runs["stopped"]["sigint"]["step"], runs["resumed"]
    said = resumed.stdout + resumed.stderr
    assert f"Trained {STEPS - step} steps (from step {step} to {STEPS}) in " in said
    # The console of a fresh run (conf/hydra/job_logging/attnlab.yaml): Lightning's notices short, no timestamps,
    # no advertisement, and no warning that the run's own checkpoint directory holds its checkpoint.
    assert "INFO: GPU available" in said
    assert not re.search(r"^\[\d{4}-\d\d-\d\d ", said, re.M), said
    assert "litlogger" not in said and "Tip:" not in said
    assert "exists and is not empty" not in said and "Warning" not in said, said


def test_a_checkpoint_at_max_steps_trains_no_step_and_says_so(runs, script_runs, tmp_path):
    """ckpt_path= a finished run's last checkpoint: the loop state says max_steps is reached, so nothing is trained;
    the run says so, scores the weights, and Lightning's notice that the checkpoint's directory is another is not
    shown (this run saves into its own)."""
    whole = runs["dirs"]["whole"]
    (done,) = script_runs.run(Path("scripts/train.py"), [[*RUN, f"ckpt_path={whole / 'checkpoints' / 'last.ckpt'}",
                                                           f"hydra.run.dir={tmp_path / 'again'}"]], ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout + done.stderr
    assert f"Trained 0 steps: the checkpoint is at step {STEPS}, where trainer.max_steps={STEPS} ends training" in said
    assert f"Trained {STEPS} steps" not in said
    assert "dirpath has changed" not in said and "exists and is not empty" not in said
    ours = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert ours == json.loads((whole / "metrics.json").read_text())  # the same weights, scored again


@pytest.mark.parametrize("start, step, said", [
    (0, 100, "Trained 100 steps in 9.0 s: val/seq_acc 1.000"),
    (455, 3000, "Trained 2545 steps (from step 455 to 3000) in 9.0 s: val/seq_acc 1.000"),
    (3000, 3000, "Trained 0 steps: the checkpoint is at step 3000, where trainer.max_steps=3000 ends training"),
    (200, 200, "Trained 0 steps: the checkpoint is at step 200. Its scores: val/seq_acc 1.000"),  # stop_at passed
])
def test_the_closing_line_counts_the_steps_this_process_trained(start, step, said):
    from attnlab import console

    assert console.learned({"val/seq_acc": 1.0, "step": step}, 9.0, start, 3000).startswith(said)


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0}).Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_resume_goes_on_in_the_same_run_directory_and_tensorboard_run(runs):
    whole, resumed, step = runs["dirs"]["whole"], runs["dirs"]["sigint"], runs["stopped"]["sigint"]["step"]
    assert f"Run saved in {resumed}" in runs["resumed"].stdout
    assert len(list(resumed.glob("events.out.tfevents.*"))) >= 2  # one per process, side by side in one run
    # The curves read back from the resumed directory are the uninterrupted run's, point for point: the stopped
    # process logged up to its step, the resumed one from there on, nothing twice, nothing missing. The one extra
    # point allowed is at the stop itself (Lightning logs and validates when asked to stop; it logs step s at s-1).
    for tag in tags.metric("train", "loss"), tags.metric("val", "seq_acc"):
        ours, theirs = scalars(resumed, tag), dict(scalars(whole, tag))
        assert {s: v for s, v in ours if s in theirs} == theirs, tag
        assert {s for s, _ in ours} - set(theirs) <= {step - 1}, tag
    train_steps = [s for s, _ in scalars(resumed, tags.metric("train", "loss"))]
    assert len(train_steps) == len(set(train_steps))
    # The original Hydra files stay; the resumed part's are beside them.
    assert (resumed / ".hydra" / "overrides.yaml").read_text() == (whole / ".hydra" / "overrides.yaml").read_text()
    assert (resumed / ".hydra" / "resume" / "config.yaml").is_file()


@pytest.mark.parametrize("step, seq_acc, said, line", [
    (20, 0.9, "it reached trainer.max_steps=20 and val/seq_acc 0.900 passed trainer.stop_at=0.5",
     "trainer.max_steps=40 trainer.stop_at=null"),
    (10, 0.9, "val/seq_acc 0.900 passed trainer.stop_at=0.5", "trainer.stop_at=null"),
    (20, 0.1, "it reached trainer.max_steps=20", "trainer.max_steps=40"),
])
def test_resume_of_a_finished_run_names_every_limit_it_reached(tmp_path, capsys, step, seq_acc, said, line):
    """resume.finished on a run directory as a finished run leaves it: the line to train longer lifts whichever of
    trainer.max_steps and trainer.stop_at ended the run, both where both did."""
    from omegaconf import OmegaConf

    from attnlab import resume

    (tmp_path / ".hydra").mkdir()
    OmegaConf.save({"trainer": {"max_steps": 20, "stop_at": 0.5}}, tmp_path / ".hydra" / "config.yaml")
    (tmp_path / "metrics.json").write_text(json.dumps({"val/seq_acc": seq_acc}))
    (tmp_path / "checkpoints").mkdir()
    torch.save({"state_dict": {}, "global_step": step, "loops": {}}, tmp_path / "checkpoints" / "last.ckpt")
    assert resume.finished([f"resume={tmp_path}"])
    out = capsys.readouterr().out
    assert f"has finished at step {step} ({said}); nothing to resume" in out
    assert out.rstrip().endswith(f"resume={tmp_path} {line}")
    assert not resume.finished([f"resume={tmp_path}", "trainer.max_steps=100", "trainer.stop_at=null"])


def test_a_resumed_overfit_cycle_goes_on_where_it_was():
    """trainer.overfit_batches=3: batch 4 of the cycle after a resume at batch 4 is the one the run would have had
    (the loader's checkpointed state says how far into the cycle it was), not the cycle's first."""
    from attnlab.data import Batches
    from attnlab.tasks import Reverse

    task = Reverse(seq_len=8, vocab_size=10)

    def batches() -> Batches:
        return Batches(task, 4, torch.Generator().manual_seed(0), steps=10, repeat=3)

    straight = [inputs for inputs, _, _ in batches()]
    assert not torch.equal(straight[0], straight[1])  # three different batches in the cycle, so order shows
    stopped = batches()
    stream = iter(stopped)
    for _ in range(4):
        next(stream)
    resumed = batches()
    resumed.load_state_dict(stopped.state_dict())
    after = [inputs for inputs, _, _ in resumed][:3]
    assert all(torch.equal(a, b) for a, b in zip(after, straight[4:7], strict=True))
