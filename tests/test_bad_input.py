"""Bad invocations of scripts/train.py: each exits non-zero before training with one clear message that names
the field or path and what is allowed, and leaves no run directory behind.

Each place the script stops bad input (before Hydra, in a Hydra callback, in the checks before torch's import,
after Lightning's) has cases that run as a process of their own, forked from the session's server that has made
torch's imports (tests/script_runs.py): exit code, one line, no run directory. The other cases of the same places
are checked in this process, through the same checks in the same order (refusal() below), for their message: a
process each would compose the config twice more (Hydra does before its run) and tear it down, some 0.8 s of CPU
per case against 0.2 s here. The case that goes furthest also runs in a fresh interpreter, and must print and exit
the same."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from omegaconf import OmegaConf

from attnlab import config, resume
from attnlab.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# (id, overrides, exit code, what stderr must say). {tmp} is the case's own temporary directory.
# Exit 2 and one line starting "error:", Hydra's refusals (an unknown option, a key without +) included.
CASES = [
    ("dim-not-a-number", ["model.dim=abc"], 2, ["model.dim must be an integer", "'abc'"]),
    ("dim-zero", ["model.dim=0"], 2, ["model.dim must be >= 1", "got 0"]),
    ("dim-float", ["model.dim=32.5"], 2, ["model.dim must be an integer", "32.5"]),
    ("heads-not-dividing", ["model.dim=32", "model.heads=3"], 2, ["model.heads must divide model.dim=32", "[1, 2, 4, 8, 16, 32]", "got 3"]),
    ("heads-zero", ["model.heads=0"], 2, ["model.heads must be >= 1"]),
    ("layers-zero", ["model.layers=0"], 2, ["model.layers must be >= 1"]),
    ("positions-unknown", ["model.positions=rotary"], 2, ["model.positions must be one of learned, sinusoidal, none", "'rotary'"]),
    ("seq-len-too-short", ["data.seq_len=1"], 2, ["data.seq_len must be in [2, 1024]", "got 1"]),
    ("vocab-too-small", ["data.vocab_size=1"], 2, ["data.vocab_size must be in [2,"]),
    ("min-len-above-seq-len", ["data.min_len=9"], 2, ["data.min_len must be null", "integer in [1, 8]", "got 9"]),
    ("min-len-below-shortest", ["data=mqar", "data.min_len=12"], 2, ["data.min_len must be null", "integer in [16, 24]", "got 12"]),
    ("min-len-without-a-length", ["data=modular_addition", "data.min_len=2"], 2, ["data.min_len must be null for modular_addition"]),
    ("val-lengths-empty", ["data.val_lengths=[]"], 2, ["data.val_lengths must be null or a non-empty list of distinct integers in [1, 1024], got []"]),
    ("val-lengths-not-integers", ["data.val_lengths=[8,long]"], 2, ["data.val_lengths must be null or a non-empty list", "got 'long' in [8, 'long']"]),
    ("val-lengths-too-long", ["data.val_lengths=[8,2048]"], 2, ["in [1, 1024], got 2048 in [8, 2048]"]),
    ("val-lengths-not-a-list", ["data.val_lengths=16"], 2, ["data.val_lengths must be null or a non-empty list", "got 16"]),
    ("val-lengths-without-a-length", ["data=modular_addition", "data.val_lengths=[4]"], 2, ["data.val_lengths must be null for modular_addition"]),
    ("positions-unknown", ["model.positions=xpos"], 2, ["model.positions must be one of learned, sinusoidal, none, rope, alibi, got 'xpos'"]),
    ("batch-size-zero", ["data.batch_size=0"], 2, ["data.batch_size must be >= 1"]),
    ("task-unknown", ["data.task=palindrome"], 2, ["data.task must be one of", "reverse", "'palindrome'"]),
    ("lr-zero", ["optim.lr=0"], 2, ["optim.lr must be a number > 0", "got 0"]),
    ("lr-not-a-number", ["optim.lr=fast"], 2, ["optim.lr must be a number > 0", "'fast'"]),
    ("schedule-unknown", ["optim.schedule=linear"], 2, ["optim.schedule must be one of constant, cosine"]),
    ("max-steps-zero", ["trainer.max_steps=0"], 2, ["trainer.max_steps must be >= 1", "got 0"]),
    ("val-every-zero", ["trainer.val_every_n_steps=0"], 2, ["trainer.val_every_n_steps must be >= 1"]),
    ("stop-at-above-one", ["trainer.stop_at=2"], 2, ["trainer.stop_at must be null or a number in (0, 1]"]),
    ("log-every-zero", ["logging.every_n_steps=0"], 2, ["logging.every_n_steps must be >= 1"]),
    ("seed-negative", ["seed=-1"], 2, ["seed must be >= 0"]),
    ("checkpoint-unknown", ["checkpoint=weekly"], 2, ["checkpoint=weekly", "allowed: every, last, log"]),
    ("checkpoint-every-zero", ["checkpoint=every", "checkpoint.every_n_steps=0"], 2, ["checkpoint.every_n_steps must be >= 1, got 0"]),
    ("checkpoint-every-unread", ["checkpoint.every_n_steps=5"], 2, ["checkpoint.every_n_steps is read by checkpoint=every only (this run: checkpoint=last)"]),
    # Checkpoints to resume from: loaded as tensors and plain values only, before anything is built.
    ("ckpt-missing", ["ckpt_path={tmp}/nowhere.ckpt"], 2, ["ckpt_path: no checkpoint file at {tmp}/nowhere.ckpt", "allowed:"]),
    ("ckpt-truncated", ["ckpt_path={tmp}/truncated.ckpt"], 2, ["ckpt_path: {tmp}/truncated.ckpt is not a readable checkpoint"]),
    ("ckpt-unsafe-object", ["ckpt_path={tmp}/unsafe.ckpt"], 2, ["ckpt_path: {tmp}/unsafe.ckpt is not a readable checkpoint", "Weights only load failed"]),
    ("ckpt-not-a-run", ["ckpt_path={tmp}/weights.pt"], 2, ["ckpt_path: {tmp}/weights.pt is not a training checkpoint"]),
    ("resume-not-a-run", ["resume={tmp}"], 2, ["resume: {tmp} is not a run directory", "allowed:"]),
    ("resume-no-checkpoint", ["resume={tmp}/started"], 2, ["resume: {tmp}/started has no checkpoints/last.ckpt"]),
    # -m resume=SWEEP_DIR: a sweep's directory, as it was started, by the basic sweeper
    ("resume-a-sweep-without-m", ["resume={tmp}/sweep"], 2, ["resume: {tmp}/sweep is a sweep directory: finish it with", "-m resume={tmp}/sweep"]),
    ("resume-m-not-a-sweep", ["-m", "resume={tmp}/started"], 2, ["resume: {tmp}/started is not a sweep directory", "allowed with -m:"]),
    ("resume-a-sweep-changed", ["-m", "resume={tmp}/sweep", "seed=3"], 2, ["resume: seed=3: a sweep is finished with the config it started with", "hydra.launcher.n_jobs=4"]),
    ("resume-an-optuna-sweep", ["-m", "resume={tmp}/optuna"], 2, ["resume: {tmp}/optuna was made by the sweeper hydra_plugins.hydra_optuna_sweeper", "run it again with the same storage"]),
    # Keys attnlab would ignore: refused, with the section's allowed keys and the closest one.
    ("key-unknown-model", ["+model.dropout=0.1"], 2, ["model.dropout is not a key of model: allowed dim, heads, layers"]),
    ("key-unknown-top", ["+foo=1"], 2, ["foo is not a key of the config: allowed seed, ckpt_path"]),
    ("key-unknown-data", ["+data.seqlen=8"], 2, ["data.seqlen is not a key of data (reverse): allowed task, seq_len, vocab_size, min_len, batch_size, val_size, val_lengths; did you mean data.seq_len?"]),
    ("key-of-another-task", ["data.num_tokens=3"], 2, ["data.num_tokens is not a key of data (reverse)"]),
    ("key-unknown-optim", ["+optim.momentum=0.9"], 2, ["optim.momentum is not a key of optim: allowed lr, weight_decay"]),
    ("key-unknown-logging", ["+logging.every_steps=5"], 2, ["logging.every_steps is not a key of logging", "did you mean logging.every_n_steps?"]),
    ("key-typo", ["model.dimm=64"], 2, ["model.dimm is not a key of model", "did you mean model.dim?"]),
    # Trainer arguments: Lightning's names only, not those attnlab sets, with values Lightning takes.
    ("trainer-argument-typo", ["++trainer.gradient_clipval=1"], 2, ["trainer.gradient_clipval is not a key of trainer", "did you mean trainer.gradient_clip_val?"]),
    ("trainer-argument-ours", ["++trainer.accelerator=cpu"], 2, ["trainer.accelerator is set by attnlab from device"]),
    ("trainer-argument-max-epochs", ["++trainer.max_epochs=3"], 2, ["trainer.max_epochs is set by attnlab from trainer.max_steps"]),
    ("trainer-clip-algorithm", ["++trainer.gradient_clip_algorithm=l1"], 2, ["trainer.gradient_clip_algorithm must be one of norm, value", "'l1'"]),
    ("trainer-accumulate-zero", ["++trainer.accumulate_grad_batches=0"], 2, ["trainer.accumulate_grad_batches must be >= 1"]),
    ("trainer-refused-by-lightning", ["++trainer.limit_val_batches=-1"], 2, ["trainer.limit_val_batches=-1: Lightning refuses it: You have passed invalid value -1 for limit_val_batches"]),
    # Options a group does not have: one line with the group's options (Hydra's own search path not printed).
    ("task-group-unknown", ["data=palindrome"], 2, ["data=palindrome: no such option; allowed: copy, histogram,", "reverse"]),
    ("task-group-unknown-in-sweep", ["-m", "data=copy,palindrome"], 2, ["data=palindrome: no such option"]),
    ("device-unknown", ["device=tpu"], 2, ["device=tpu: no such option; allowed: auto, cpu"]),
    ("logging-unknown", ["logging=verbose"], 2, ["logging=verbose: no such option; allowed: default, off"]),
    ("debug-unknown", ["debug=everything"], 2, ["debug=everything: no such option; allowed: anomaly, fdr, overfit, profiler"]),
    ("recipe-unknown", ["+experiment=palindrome"], 2, ["experiment=palindrome: no such option; allowed: copy"]),
    ("recipe-unknown-in-a-suite", ["+experiment=lengths/palindrome"], 2, ["experiment=lengths/palindrome: no such option; allowed: lengths/copy, lengths/induction"]),
    ("recipe-unknown-in-rasp", ["+experiment=rasp/palindrome"], 2, ["experiment=rasp/palindrome: no such option; allowed: rasp/double_hist, rasp/double_hist_minus_head"]),
    ("supervised-head-beyond-heads", ["data=rasp_double_hist", "loss=rasp", "model.layers=2"], 2, ["model.heads must be >= 2 for loss.attention with rasp_double_hist: layer 0 supervises heads 0-1, got 1"]),
    ("launcher-unknown", ["hydra/launcher=cluster"], 2, ["hydra/launcher=cluster: no such option; allowed: basic", "joblib"]),
    # The run or sweep directory: checked before Hydra makes it (attnlab.config.OutputDirCheck).
    ("output-dir-unwritable", ["hydra.run.dir={tmp}/a_file/run"], 2, ["hydra.run.dir: cannot write to {tmp}/a_file/run (Not a directory)"]),
    ("sweep-dir-unwritable", ["-m", "model.dim=16,32", "hydra.sweep.dir={tmp}/a_file/sweep"], 2, ["hydra.sweep.dir: cannot write to {tmp}/a_file/sweep"]),
]
if not torch.cuda.is_available():
    CASES.append(("device-gpu-without-cuda", ["device=gpu"], 2, ["device=gpu: no CUDA GPU found", "use device=cpu or device=auto"]))

# The cases run as scripts/train.py processes: at least one for each place the script stops bad input, each place
# a path of its own from the ConfigError to exit code 2 and the run directory removed (or never made).
END_TO_END = {
    "heads-not-dividing",  # config.check, before torch's import (and the whole of stderr: a test below)
    "ckpt-truncated",  # the checkpoint, loaded (weights only) before anything is built
    "resume-not-a-run", "resume-no-checkpoint",  # resume=, before Hydra
    "resume-a-sweep-without-m", "resume-m-not-a-sweep", "resume-a-sweep-changed", "resume-an-optuna-sweep",  # -m resume=
    "key-typo",  # a key without +: Hydra would refuse it with its own lines, config.checked_arguments hands it on
    "trainer-refused-by-lightning",  # after Lightning's import, in train.run (also run afresh: a test below)
    "task-group-unknown", "task-group-unknown-in-sweep",  # a group's option, before Hydra; and under -m
    "output-dir-unwritable", "sweep-dir-unwritable",  # Hydra's callback (OutputDirCheck), for a run and a sweep
    "device-gpu-without-cuda",  # config.check_device
}
SUBPROCESS_CASES = [c for c in CASES if c[0] in END_TO_END]
IN_PROCESS_CASES = [c for c in CASES if c[0] not in END_TO_END]


def prepare(tmp: Path) -> None:
    """The files the checkpoint and resume cases point at."""
    from attnlab.model import AttentionModel

    (tmp / "a_file").write_text("a file where a directory should be\n")
    model = {f"model.{k}": v for k, v in AttentionModel(10, 15, 16, 1, 1, "learned", True, False, False).state_dict().items()}
    torch.save({"state_dict": model, "global_step": 100, "loops": {}, "epoch": 0}, tmp / "run.ckpt")
    (tmp / "truncated.ckpt").write_bytes((tmp / "run.ckpt").read_bytes()[:3000])  # as a disk-full write leaves it
    torch.save({"state_dict": model, "global_step": 100, "loops": {}, "saved": Path("/x")}, tmp / "unsafe.ckpt")
    torch.save(model, tmp / "weights.pt")
    (tmp / "started" / ".hydra").mkdir(parents=True)
    (tmp / "started" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    for name, sweeper in ("sweep", resume.BASIC_SWEEPER), ("optuna", "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"):
        (tmp / name).mkdir()
        OmegaConf.save({"hydra": {"sweeper": {"_target_": sweeper}, "overrides": {"task": ["seed=0,1"], "hydra": []}}},
                       tmp / name / resume.SWEEP_CONFIG)


def arguments(tmp: Path, name: str, overrides: list[str]) -> list[str]:
    """The case's command line: {tmp} filled in, and a run directory of its own unless it names one."""
    args = [o.replace("{tmp}", str(tmp)) for o in overrides]
    if not any(a.startswith("hydra.run.dir=") for a in args):
        args.append(f"hydra.run.dir={tmp}/runs/{name}")
    return args


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bad_input")
    prepare(tmp)
    return tmp


@pytest.fixture(scope="module")
def results(prepared, script_runs) -> dict:
    runs = [arguments(prepared, name, o) for name, o, _, _ in SUBPROCESS_CASES]
    done = script_runs.run(ROOT / "scripts" / "train.py", runs, ROOT)
    return {"tmp": prepared, **dict(zip([c[0] for c in SUBPROCESS_CASES], done))}


@pytest.mark.parametrize("name, overrides, code, says", SUBPROCESS_CASES, ids=[c[0] for c in SUBPROCESS_CASES])
def test_bad_input_stops_before_training(results, name, overrides, code, says):
    tmp, result = results["tmp"], results[name]
    assert result.returncode == code, result.stderr[-2000:]
    for text in says:
        assert text.replace("{tmp}", str(tmp)) in result.stderr, result.stderr[-2000:]
    if code == 2:  # ours: one line, no traceback
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    # Before any training step and nothing left that looks like a run: the case's directory is gone (or was
    # never made), and nothing anywhere under tmp holds event files, metrics or a checkpoint it wrote.
    assert not (tmp / "runs" / name).exists()
    assert not list(tmp.rglob("events.out.tfevents*")) and not list(tmp.rglob("metrics.json"))
    assert "Run saved in" not in result.stdout


def refusal(tmp: Path, overrides: list[str]) -> str:
    """The message of the ConfigError scripts/train.py stops with, found by its checks in its order: the command line
    (config.check_extras, config.checked_arguments), the config Hydra composes from it, train()'s checks before
    torch's import, then train.build as train.run begins with it (trainer arguments, after Lightning's import)."""
    from attnlab.tasks import make_task
    from attnlab.train import build

    args = [o.replace("{tmp}", str(tmp)) for o in overrides]
    with pytest.raises(ConfigError) as refused:
        config.check_extras(args)
        args = config.checked_arguments(args)
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="train", overrides=args)
        config.check(cfg)
        make_task(cfg.data)
        config.check_device(cfg.device)
        if cfg.get("ckpt_path"):
            resume.load_checkpoint(cfg.ckpt_path)
        build(cfg)
    return str(refused.value)


@pytest.mark.parametrize("name, overrides, code, says", IN_PROCESS_CASES, ids=[c[0] for c in IN_PROCESS_CASES])
def test_bad_input_is_refused_with_one_line(prepared, name, overrides, code, says):
    """What the script prints for the case, `error: MESSAGE` on one line, and exits with: every ConfigError ends the
    script with exit code 2 (the cases above, one or more for each place it is raised)."""
    assert code == 2
    message = refusal(prepared, overrides)
    assert "\n" not in message, message
    for text in says:
        assert text.replace("{tmp}", str(prepared)) in message, message


def test_a_fresh_interpreter_stops_the_same_way(results):
    """The script started afresh, as a user starts it, prints and exits as its forked run did, for the case that goes
    furthest (Lightning imported, its Trainer built and refusing an argument): one line on stderr, Lightning's
    notices on stdout as the run's logging config puts them, exit code 2, no run directory."""
    tmp, forked = results["tmp"], results["trainer-refused-by-lightning"]
    run_dir = tmp / "runs" / "fresh"
    command = [sys.executable, "scripts/train.py", "++trainer.limit_val_batches=-1", f"hydra.run.dir={run_dir}"]
    fresh = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (fresh.returncode, fresh.stdout, fresh.stderr) == (forked.returncode, forked.stdout, forked.stderr)
    assert fresh.returncode == 2 and fresh.stderr.count("\n") == 1 and "INFO: GPU available" in fresh.stdout
    assert not run_dir.exists()


def test_outside_a_sweep_a_failing_run_is_not_isolated(results):
    """Outside -m nothing changes: bad input is one line on stderr, nothing else, exit code 2 (a sweep's job would
    be recorded as failed and the sweep go on: tests/test_sweep.py)."""
    result = results["heads-not-dividing"]
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: model.heads must divide model.dim=32 (allowed: [1, 2, 4, 8, 16, 32]), got 3"
    ]


def test_a_config_that_needs_an_extra_not_installed_says_which(monkeypatch):
    config.check_extras(["-m", "+hparams_search=lr_dim_heads"])  # installed with the test extra: no error
    monkeypatch.setitem(config.EXTRAS, "hparams_search", ("hydra_plugins.not_installed", "optuna"))
    with pytest.raises(config.ConfigError, match=r"hparams_search needs hydra_plugins.not_installed, which is not installed: pip install -e '.\[optuna\]'"):
        config.check_extras(["-m", "+hparams_search=lr_dim_heads"])
    config.check_extras(["model.dim=8"])  # other groups need nothing
