"""Stacked training (attnlab.stacked, hydra/launcher=stacked): each member trains as its solo run would (the same
losses step by step, final metrics, checkpoint and TensorBoard tags), stops and fails on its own, and is a real run
directory that resume= goes on from; the launcher groups a sweep's jobs by shape, through scripts/train.py."""

import json
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from attnlab import stacked, tags, train
from attnlab.guards import Diverged

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "scripts" / "train.py"
STEPS = 20
SHORT = ["device=cpu", f"trainer.max_steps={STEPS}", "trainer.val_every_n_steps=10", "trainer.stop_at=null",
         "logging.every_n_steps=1", "logging.images_every_n_steps=10", "logging.progress_bar=false", "data.val_size=64"]
# Two members that differ in all a member may: seed, lr, weight decay, warm-up, schedule, attention supervision.
MEMBERS = [["seed=1", "optim.lr=3e-3"],
           ["seed=2", "optim.lr=1e-2", "optim.weight_decay=0.1", "optim.warmup_steps=5", "optim.schedule=cosine",
            "loss.attention=0.5"]]


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def tag_set(run_dir: Path) -> dict[str, list[str]]:
    return {kind: sorted(names) for kind, names in events(run_dir).Tags().items() if isinstance(names, list)}


def flat(d, prefix: str = "") -> dict:
    """A checkpoint's nested dicts and lists as {"a/b/0/c": leaf}."""
    items = d.items() if isinstance(d, dict) else enumerate(d)
    out = {}
    for key, value in items:
        nested = isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], dict))
        out.update(flat(value, f"{prefix}{key}/") if nested else {f"{prefix}{key}": value})
    return out


def assert_trained_as_solo(member_dir: Path, solo_dir: Path, solo: dict, cfg, atol: float) -> None:
    """A member's run directory holds what its solo run's does: every step's loss (logging.every_n_steps=1) and lr,
    its final metrics, every TensorBoard tag, checkpoints/last.ckpt in the solo format with the same state (tensors
    within `atol`)."""
    for tag in (tags.metric("train", "loss"), stacked.LR_TAG):
        ours, theirs = events(member_dir).Scalars(tag), events(solo_dir).Scalars(tag)
        assert [e.step for e in ours] == [e.step for e in theirs] == list(range(STEPS))
        torch.testing.assert_close([e.value for e in ours], [e.value for e in theirs], rtol=1e-5, atol=1e-5)
    final = json.loads((member_dir / "metrics.json").read_text())
    assert final.keys() == solo.keys() and final["step"] == STEPS
    torch.testing.assert_close(final, solo, rtol=1e-4, atol=1e-5)
    assert final["val/loss"] < math.log(cfg.data.vocab_size)  # learned something
    # every TensorBoard tag the solo run writes: scalars, images, histograms, text, HParams, the plugin's frames
    assert tag_set(member_dir) == tag_set(solo_dir)
    # checkpoints/last.ckpt in the solo format, with the same weights, moments and loop state
    ours, theirs = (flat(torch.load(d / "checkpoints" / "last.ckpt", weights_only=True))
                    for d in (member_dir, solo_dir))
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        if "dirpath" in key or "best_model_path" in key:
            assert value.replace(str(solo_dir), str(member_dir)) == ours[key]
        elif torch.is_tensor(value):
            torch.testing.assert_close(ours[key], value, rtol=1e-4, atol=atol, msg=lambda m: f"{key}: {m}")
        elif isinstance(value, float):
            assert ours[key] == pytest.approx(value), key  # an lr: computed on the host, per member
        else:
            assert ours[key] == value, key


@pytest.mark.parametrize("model", [[], ["model.layers=2", "model.heads=2", "model.mlp=true", "model.norm=true",
                                         "++trainer.gradient_clip_val=0.1"],
                                    # lengths of their own (padding masked), scored at two more lengths, rotary positions
                                    ["++data.min_len=3", "++data.val_lengths=[8,12]", "model.layers=2",
                                     "model.positions=rope"],
                                    # a target per head (the RASP double histogram's selectors), RASP-exps's term
                                    ["data=rasp_double_hist", "data.seq_len=6", "data.vocab_size=3", "model.layers=2",
                                     "model.heads=2", "loss.attention_form=rasp"]],
                         ids=["1-layer", "2-layer-mlp-norm-clipped", "variable-length-rope", "rasp-per-head-targets"])
def test_members_train_as_their_solo_runs(tmp_path, model):
    cfgs = [compose_cfg(SHORT + model + member) for member in MEMBERS]
    # With padding the fused kernel takes a mask, and its sums run in another order when the members are folded
    # into one batch: the members' losses stay within 3e-6 of their solo runs', the weights within a few 1e-6.
    atol = 1e-5 if cfgs[0].data.get("min_len") else 1e-6
    members = stacked.train_group(cfgs, [tmp_path / f"member{k}" for k in range(len(cfgs))])
    for k, (cfg, member) in enumerate(zip(cfgs, members)):
        solo_dir = tmp_path / f"solo{k}"
        solo = train.run(cfg, solo_dir)
        assert isinstance(member.outcome, dict)
        assert_trained_as_solo(member.run_dir, solo_dir, solo, cfg, atol)


def test_a_member_stops_or_fails_alone(tmp_path):
    """A member past trainer.stop_at is frozen at that step with its solo run's metrics and checkpoint; a member that
    diverges fails with the solo message; the member between them trains on to max_steps."""
    base = ["device=cpu", "data.seq_len=2", "data.vocab_size=3", "trainer.max_steps=30", "trainer.val_every_n_steps=10",
            "logging.every_n_steps=5", "logging.images_every_n_steps=0", "logging.progress_bar=false",
            "data.val_size=64"]
    # 2 tokens of 3: guessing already solves 1/9 of the sequences, past stop_at=0.05 at the first validation
    cfgs = [compose_cfg(base + o) for o in (["seed=1", "trainer.stop_at=0.05"], ["seed=2", "trainer.stop_at=null"],
                                             ["seed=3", "trainer.stop_at=null", "optim.lr=1e30"])]
    stopping, going, diverging = stacked.train_group(cfgs, [tmp_path / f"m{k}" for k in range(3)])

    solo = train.run(cfgs[0], tmp_path / "solo")
    assert stopping.outcome["step"] == solo["step"] == 10
    torch.testing.assert_close(stopping.outcome, solo, rtol=1e-4, atol=1e-5)
    saved = torch.load(stopping.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    reference = torch.load(tmp_path / "solo" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 10
    for name, weight in reference["state_dict"].items():
        torch.testing.assert_close(saved["state_dict"][name], weight, rtol=1e-4, atol=1e-5)
        # frozen since: the stacked weights still hold what step 10 saved
        torch.testing.assert_close(stopping.view.state_dict()[name], weight, rtol=1e-4, atol=1e-5)
    for ours, theirs in zip(saved["optimizer_states"][0]["state"].values(), reference["optimizer_states"][0]["state"].values()):
        assert float(ours["step"]) == float(theirs["step"]) == 10
        torch.testing.assert_close(ours["exp_avg_sq"], theirs["exp_avg_sq"], rtol=1e-4, atol=1e-9)
    assert [e.step for e in events(stopping.run_dir).Scalars("train/loss")] == [4, 9]  # nothing after it stopped
    for tag in ("epoch", "val/loss", "val/seq_acc"):  # its validations logged as its solo run's, at the same steps
        ours, theirs = events(stopping.run_dir).Scalars(tag), events(tmp_path / "solo").Scalars(tag)
        assert [(e.step, round(e.value, 4)) for e in ours] == [(e.step, round(e.value, 4)) for e in theirs], tag

    assert going.outcome["step"] == 30 and math.isfinite(going.outcome["val/loss"])
    assert isinstance(diverging.outcome, Diverged)
    assert "training diverged: train/loss is nan at step" in str(diverging.outcome)
    assert not (diverging.run_dir / "metrics.json").exists()


def test_members_dropped_from_the_stack_leave_the_others_as_they_were():
    """A member that stops leaves the stack (StackedLM.compact: StackedModel.keep, StackedAdamW.keep): the members
    kept take the same next step as in the full stack with the dropped one frozen, and the dropped one's solo view
    still holds its weights."""
    from attnlab.model import AttentionModel

    def solo(seed: int) -> AttentionModel:
        torch.manual_seed(seed)
        return AttentionModel(6, 5, 8, 2, 1, "learned", True, True, True)

    def step(model, optimizer, tokens, lr) -> None:
        optimizer.lr = lr
        logits, _ = model(tokens)
        # [member, batch * pos] losses: the sum of the members' means, as StackedLM's (each member's gradient its own)
        F.cross_entropy(logits.flatten(1, 2).transpose(1, 2), tokens.flatten(1), reduction="none").mean(1).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    tokens = torch.randint(6, (3, 4, 5), generator=torch.Generator().manual_seed(0))  # [member, batch, pos]
    lr = torch.tensor([1e-2, 2e-2, 3e-2])
    sides = []
    for _ in range(2):
        model = stacked.StackedModel([solo(s) for s in range(3)])
        optimizer = stacked.StackedAdamW(model.parameters(), torch.tensor([0.0, 0.1, 0.2]))
        step(model, optimizer, tokens, lr)
        sides.append((model, optimizer))
    (full, full_optimizer), (kept, kept_optimizer) = sides
    dropped = {name: t[1] for name, t in kept.state_dict().items()}  # member 1's slices, as its solo view sees them
    before = {name: t.clone() for name, t in dropped.items()}
    full_optimizer.active[1] = False
    step(full, full_optimizer, tokens, lr)
    index = torch.tensor([0, 2])
    kept.keep(index)
    kept_optimizer.keep(index, list(kept.parameters()))
    step(kept, kept_optimizer, tokens[index], lr[index])
    for name, tensor in kept.state_dict().items():
        torch.testing.assert_close(tensor, full.state_dict()[name][index], msg=name)
        torch.testing.assert_close(dropped[name], before[name], rtol=0, atol=0, msg=name)
    for new, old in zip(kept_optimizer.param_groups[0]["params"], full_optimizer.param_groups[0]["params"]):
        torch.testing.assert_close(kept_optimizer.state[new]["exp_avg_sq"], full_optimizer.state[old]["exp_avg_sq"][index])
    assert kept_optimizer.steps.tolist() == [2, 2] and full_optimizer.steps.tolist() == [2, 1, 2]


def run_forked(script_runs, args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """scripts/train.py ARGS in a process of its own, forked from the session's process that has made torch's
    imports (tests/script_runs.py)."""
    (result,) = script_runs.run(TRAIN, [args], cwd, timeout=timeout)
    return result


TINY = ["device=cpu", "trainer.max_steps=20", "trainer.val_every_n_steps=10", "trainer.stop_at=null",
        "logging.every_n_steps=5", "logging.images_every_n_steps=10", "logging.progress_bar=false", "data.val_size=64"]
# For the sweeps that read no frame (a member's frames are its solo run's: test_members_train_as_their_solo_runs
# compares every tag): drawing them was a sixth of the launcher sweep's CPU.
NO_FRAMES = [a for a in TINY if not a.startswith("logging.images")] + ["logging.images_every_n_steps=0"]


@pytest.mark.slow
def test_stacked_sweep_through_the_launcher(tmp_path, script_runs):
    sweep = tmp_path / "sweep"
    # 8 jobs: two widths x two seeds, each with a valid and an invalid weight decay: 2 groups of 2 members, 4 refused;
    # all in the sweep's process (the groups on two workers: test_groups_on_two_workers_...)
    result = run_forked(script_runs, ["-m", "hydra/launcher=stacked", "hydra.launcher.n_jobs=1", "model.dim=16,32",
                                      "seed=0,1", "optim.weight_decay=0,-1", *NO_FRAMES, f"hydra.sweep.dir={sweep}"],
                        tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert log.count("2 members (") == 2  # two stacked groups of two
    # a group's Lightning notices as a solo run's console shows them: each once, no advertisement; the devices are
    # said by the sweep's first job only (the group it is in)
    assert log.count("GPU available:") == 1 and "Tip:" not in log
    with (sweep / "summary.csv").open() as f:
        import csv

        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    for row in rows:
        record = json.loads((sweep / row["run_dir"] / "job.json").read_text())
        if row["optim.weight_decay"] == "-1":
            assert row["status"] == "failed" and "optim.weight_decay must be a number >= 0" in row["error"]
            assert not (sweep / row["run_dir"] / ".hydra").exists()  # refused: no run left, as under any launcher
            continue
        run_dir = sweep / row["run_dir"]
        assert row["status"] == "ok" and record["status"] == "ok", row
        assert (run_dir / ".hydra" / "config.yaml").is_file() and list(run_dir.glob("events.out.tfevents.*"))
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert float(row["val/loss"]) == pytest.approx(metrics["val/loss"]) and metrics["step"] == 20
        assert metrics["val/loss"] < math.log(10)
        assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 20
    assert (sweep / "summary.png").is_file()


@pytest.mark.parametrize("units, workers, max_members, expected", [
    # 8 seeds on 2 workers: two stacked halves
    ([(list(range(8)), 1000)], 2, 64, [[[0, 1, 2, 3]], [[4, 5, 6, 7]]]),
    # 3 groups of 4 on 2 workers: the middle group cut where the first share ends, 6 members each
    ([([0, 1, 2, 3], 100), ([4, 5, 6, 7], 100), ([8, 9, 10, 11], 100)], 2, 64,
     [[[0, 1, 2, 3], [4, 5]], [[6, 7], [8, 9, 10, 11]]]),
    # balanced by members x steps, not by count: 2 long members against 8 short ones
    ([([0, 1], 1000), (list(range(2, 10)), 250)], 2, 64, [[[0, 1]], [list(range(2, 10))]]),
    # a refused job (no steps) and a solo one among them, max_members cuts a share's group again
    ([([0], 0), ([1], 100), (list(range(2, 8)), 100)], 2, 2, [[[0], [1], [2, 3]], [[4, 5], [6, 7]]]),
    # fewer members than workers: no empty share; one worker keeps the sweep's order
    ([([0, 1], 10)], 4, 64, [[[0]], [[1]]]),
    ([([0], 0), ([1, 2, 3], 10), ([4, 5], 20)], 1, 2, [[[0], [1, 2], [3], [4, 5]]]),
])
def test_shares_split_the_work_evenly(units, workers, max_members, expected):
    from hydra_plugins.attnlab_stacked.stacked_launcher import shares

    assert shares(units, workers, max_members) == expected


def test_one_worker_per_gpu(monkeypatch):
    """device=gpu (or auto where CUDA is found) on a machine with several GPUs: n_jobs defaults to one worker per
    GPU, and worker i's process sees GPU i only (CUDA_VISIBLE_DEVICES), so that its device 0 is its own GPU (worker
    0, the sweep's own process, trains on its device 0, the first GPU). The
    CUDA runtime is stood in for here (no GPU on the machine the tests run on); the worker processes are real."""
    from omegaconf import OmegaConf

    from hydra_plugins.attnlab_stacked.stacked_launcher import StackedLauncher, cores

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    launcher = StackedLauncher()
    jobs = {accelerator: [OmegaConf.create({"device": {"accelerator": accelerator, "threads": 1}})] * 2
            for accelerator in ("gpu", "auto", "cpu", "mps")}
    assert launcher.gpus(jobs["gpu"]) == launcher.gpus(jobs["auto"]) == ["0", "1", "2"]
    assert launcher.default_workers(jobs["gpu"], ["0", "1", "2"]) == 3
    assert launcher.gpus(jobs["cpu"]) == [] and launcher.default_workers(jobs["cpu"], []) == cores()
    assert launcher.default_workers(jobs["mps"], []) == 1  # Apple's GPU: one device, one worker
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")  # the GPUs this sweep was given, as its workers name them
    assert launcher.gpus(jobs["gpu"]) == ["2", "5"]
    try:  # worker 1 (the second: worker 0 is the sweep's own process, on the first GPU)
        assert launcher.pool(1, "5").submit(os.getenv, "CUDA_VISIBLE_DEVICES").result(timeout=120) == "5"
    finally:
        launcher.close()
    assert not launcher.pools


@pytest.mark.slow
def test_groups_on_two_workers_train_each_member_as_its_solo_run(tmp_path, script_runs):
    """hydra.launcher.n_jobs=2: the group of 4 cut in two, each half a stacked model in a worker process of its own;
    every member's run directory is still its solo run's, step by step."""
    sweep = tmp_path / "sweep"
    result = run_forked(script_runs, ["-m", "hydra/launcher=stacked", "hydra.launcher.n_jobs=2", "seed=1,2",
                                      "optim.lr=3e-3,1e-2", *SHORT, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "2 workers (n_jobs=2)" in log
    assert "Worker 1: Group 1/1: 2 members (" in log and "Worker 2: Group 1/1: 2 members (" in log
    records = [json.loads(p.read_text()) for p in sweep.glob("*/job.json")]
    assert sorted(r["job"] for r in records) == [0, 1, 2, 3] and {r["status"] for r in records} == {"ok"}
    for path in sweep.glob("*/job.json"):  # one member of each worker's group: #0 (the sweep's process) and #3
        record = json.loads(path.read_text())
        if record["job"] in (0, 3):
            cfg = compose_cfg(record["overrides"])
            solo_dir = tmp_path / f"solo-{record['job']}"
            # weights within 1e-5: the stack sums in another order than the solo model, and at optim.lr=1e-2 a weight
            # ends up to 3e-6 from its solo run's after 20 steps (in one process or in a worker alike)
            assert_trained_as_solo(path.parent, solo_dir, train.run(cfg, solo_dir), cfg, 1e-5)


@pytest.mark.parametrize("given, line", [
    ("device=cpu_ddp", "error: device=cpu_ddp: hydra/launcher=stacked trains a group's members in one process (allowed: "
                       "device=auto, cpu, gpu or mps); launch multi-process runs with the basic, joblib or slurm launcher"),
    ("hydra.launcher.max_members=0", "error: hydra.launcher.max_members must be >= 1, got 0"),
    ("hydra.launcher.threads=0", "error: hydra.launcher.threads must be >= 1, got 0"),
    ("hydra.launcher.n_jobs=0", "error: hydra.launcher.n_jobs must be >= 1, got 0"),
    ("hydra.launcher.n_jobs=two", "error: hydra.launcher.n_jobs must be an integer, got 'two'"),
    ("hydra.launcher.n_jobs=1.5", "error: hydra.launcher.n_jobs must be an integer, got 1.5"),
])
def test_what_cannot_be_stacked_is_refused_with_one_line(tmp_path, script_runs, given, line):
    result = run_forked(script_runs, ["-m", "hydra/launcher=stacked", given, "seed=0,1", f"hydra.sweep.dir={tmp_path / 's'}"],
                        tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [line]
    assert not (tmp_path / "s").exists()  # no sweep directory left


@pytest.mark.slow
def test_a_signal_stops_every_member_with_its_checkpoint_and_a_member_resumes_alone(tmp_path, script_runs):
    sweep, steps = tmp_path / "sweep", 1000
    args = [a for a in TINY if not a.startswith("trainer.max_steps")] + [f"trainer.max_steps={steps}", "model.dim=16",
                                                                         "data.batch_size=32"]
    # started, forked from the session's server (tests/script_runs.py): a Popen-like handle, its pid for the signal
    process = script_runs.start(TRAIN, ["-m", "hydra/launcher=stacked", "hydra.launcher.n_jobs=1", "seed=0,1", *args,
                                        f"hydra.sweep.dir={sweep}"], tmp_path)
    deadline = time.monotonic() + 240
    while not list(sweep.glob("*/checkpoints/last.ckpt")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=240)
    assert process.returncode == 128 + signal.SIGINT, err[-3000:]
    run_dirs = sorted(p.parent.parent for p in sweep.glob("*/checkpoints/last.ckpt"))
    assert len(run_dirs) == 2
    saved = {torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] for d in run_dirs}
    assert len(saved) == 1 and 10 <= min(saved) < steps  # both at the step the group stopped at
    for run_dir in run_dirs:
        assert f"Resume with:  python {TRAIN} resume={run_dir}" in err
        assert json.loads((run_dir / "job.json").read_text())["status"] == "interrupted"

    # A member is a run like any other: resume goes on from its checkpoint, in its directory, alone (10 more steps).
    more = min(saved) + 10
    resumed = run_forked(script_runs, [f"resume={run_dirs[0]}", f"trainer.max_steps={more}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dirs[0] / "metrics.json").read_text())["step"] == more
    assert torch.load(run_dirs[0] / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == more


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads the sweep's processes from /proc")
def test_sigterm_to_a_sweep_on_two_workers_saves_every_member_and_leaves_no_process(tmp_path, script_runs):
    """kill of the sweep's process group, two workers training a group of two each: every member saves its
    checkpoint at the step its group reached, the job after them in the second worker does not start, the summary
    says so, and no process of the sweep is left (as a joblib sweep's, tests/test_sweep_launchers.py)."""
    sweep, steps = tmp_path / "sweep", 100000
    args = [a for a in NO_FRAMES if not a.startswith("trainer.max_steps")]
    args += [f"trainer.max_steps={steps}", "model.dim=16", "data.batch_size=32"]
    # 5 seeds on 2 workers, at most 2 members a model: #0-#1 in one, #2-#3 then #4 alone in the other
    launcher = ["hydra/launcher=stacked", "hydra.launcher.n_jobs=2", "hydra.launcher.max_members=2"]
    process = script_runs.start(TRAIN, ["-m", *launcher, "seed=range(5)", *args, f"hydra.sweep.dir={sweep}"], tmp_path,
                                new_session=True)
    # signalled once both groups are training (each member past step 10)
    out, err, left, took = process.stop_group(
        lambda: len(list(sweep.glob("*/checkpoints/last.ckpt"))) >= 4, within=240, timeout=120)
    assert not left, f"still running {took:.0f} s after SIGTERM: {left}"
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]

    records = {json.loads(p.read_text())["job"]: json.loads(p.read_text()) for p in sweep.glob("*/job.json")}
    assert {job: r["status"] for job, r in records.items()} == {0: "interrupted", 1: "interrupted", 2: "interrupted",
                                                                3: "interrupted", 4: "not started"}
    assert "5 jobs, 4 interrupted, 1 not started." in out
    assert not list(sweep.glob("*/metrics.json"))  # no job trained on to the end
    stopped = re.findall(r"Training stopped by SIGTERM at step (\d+); checkpoint saved: (\S+)", err)
    assert len(stopped) == 4
    for step, checkpoint in stopped:  # each saved at the step its group stopped at: resumed, it goes on from there
        assert torch.load(checkpoint, weights_only=True)["global_step"] == int(step) >= 10
        assert f"Resume with:  python {TRAIN} resume={Path(checkpoint).parent.parent}" in err
    assert records[4]["error"] == "the sweep was stopped by SIGTERM before this job began"


@pytest.mark.slow
def test_optuna_batch_trained_together_each_trial_valued_by_its_own_run(tmp_path, script_runs):
    optuna = pytest.importorskip("optuna")
    sweep, db = tmp_path / "sweep", tmp_path / "study.db"
    # The shipped search space with one width and head count: only the lr differs, so a batch is one group.
    result = run_forked(script_runs, ["-m", "hydra/launcher=stacked", "+hparams_search=lr_dim_heads",
                         'hydra.sweeper.params={model.dim:"choice(32)",model.heads:"choice(1)"}',
                         "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=3", "hydra.launcher.n_jobs=2",
                         "optimized_metric=val/loss", "hydra.sweeper.direction=minimize",
                         f"hydra.sweeper.storage=sqlite:///{db}", "hydra.sweeper.study_name=test", *NO_FRAMES,
                         f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # two batches of n_jobs=3 trials, each cut in two shares: one trial alone in a worker, two trained as one model
    # in the other (the second batch in the workers the first started)
    log = result.stdout + result.stderr
    assert log.count("Worker 2: Group 1/1: 2 members (") == 2 and log.count(" alone (a group of one)") == 2
    losses = {}
    for metrics in sweep.glob("trial*/metrics.json"):
        losses[int(metrics.parent.name.removeprefix("trial").split("_")[0])] = json.loads(metrics.read_text())["val/loss"]
    assert sorted(losses) == list(range(6)) and len(set(losses.values())) == 6  # each trial its own lr, its own loss
    study = optuna.load_study(study_name="test", storage=f"sqlite:///{db}")
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"] * 6
    assert {t.number: t.value for t in study.get_trials()} == pytest.approx(losses)
