"""trainer.* arguments reach Lightning, or attnlab carries them out the way Lightning would: gradient clipping and
accumulation in the manual optimisation step, a dry run, a repeated batch, profilers; and the debug group
(conf/debug/) built on them. Also what a finished run's resume says, and train/* scalars seen by callbacks."""

import json
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import EarlyStopping
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from attnlab import tags
from attnlab.module import AttentionLM, loss
from attnlab.train import build, run

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "device=cpu", "data.seq_len=4", "data.batch_size=16", "data.val_size=32", "model.dim=16",
    "trainer.stop_at=null", "logging.progress_bar=false", "logging.images_every_n_steps=0",
]


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[*SMALL, *overrides])


class Automatic(AttentionLM):
    """The same model and loss under Lightning's automatic optimisation, which clips and accumulates by itself."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.automatic_optimization = True

    def training_step(self, batch, batch_idx):
        inputs, targets, mask = batch
        logits, _ = self.model(inputs)
        return loss(logits, targets, mask)


class LightningPath(L.Callback):
    """Overrides a step hook: training_step then takes manual_backward and LightningOptimizer.step, not the plain
    calls (module.STEP_HOOKS)."""

    def on_before_optimizer_step(self, trainer, module, optimizer):
        pass


def trained_weights(cfg, automatic: bool, callbacks=()) -> dict[str, torch.Tensor]:
    L.seed_everything(cfg.seed, verbose=False)
    _, module, data = build(cfg)
    trainer_args = dict(
        accelerator="cpu", max_steps=cfg.trainer.max_steps, max_epochs=-1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=list(callbacks),
    )
    if automatic:
        state = module.model.state_dict()
        module = Automatic(module.model, **cfg.optim)
        module.model.load_state_dict(state)
        extra = cfg.trainer
        trainer_args.update(
            gradient_clip_val=extra.get("gradient_clip_val"), gradient_clip_algorithm=extra.get("gradient_clip_algorithm"),
            accumulate_grad_batches=extra.get("accumulate_grad_batches", 1),
        )
    L.Trainer(**trainer_args).fit(module, datamodule=data)
    return {name: p.detach().clone() for name, p in module.model.named_parameters()}


@pytest.mark.parametrize(
    "arguments",
    [
        ["++trainer.gradient_clip_val=0.05"],
        ["++trainer.gradient_clip_val=0.002", "++trainer.gradient_clip_algorithm=value"],
        ["++trainer.accumulate_grad_batches=3"],
        ["++trainer.accumulate_grad_batches=2", "++trainer.gradient_clip_val=0.05"],
    ],
    ids=["clip-norm", "clip-value", "accumulate", "accumulate-and-clip"],
)
def test_clipping_and_accumulation_match_lightnings_automatic_optimisation(arguments):
    cfg = composed("trainer.max_steps=8", "optim.lr=1e-2", *arguments)
    reference = trained_weights(cfg, automatic=True)
    unclipped = trained_weights(composed("trainer.max_steps=8", "optim.lr=1e-2"), automatic=True)
    # The arguments change training (the clip bites, the accumulation averages other batches), so that agreeing
    # with the reference below means doing what Lightning does, not doing nothing.
    assert any(not torch.allclose(reference[n], unclipped[n], atol=1e-4) for n in reference)
    for path, callbacks in (("plain", ()), ("lightning", (LightningPath(),))):
        ours = trained_weights(cfg, automatic=False, callbacks=callbacks)
        for name in reference:
            torch.testing.assert_close(ours[name], reference[name], rtol=1e-5, atol=1e-6, msg=f"{path}: {name}")


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    (events,) = run_dir.glob("events.out.tfevents.*")  # one event file per run
    accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def test_debug_overfit_drives_the_loss_of_one_repeated_batch_to_near_zero(tmp_path):
    cfg = composed("debug=overfit", "trainer.max_steps=200", "logging.every_n_steps=10")
    assert cfg.trainer.overfit_batches == 1
    run(cfg, tmp_path)
    losses = scalars(tmp_path, tags.metric("train", "loss"))
    assert losses[0][1] > 1.0  # it starts near log(vocab) ...
    assert losses[-1][1] < 0.05, losses[-5:]  # ... and the one batch is learned by heart


def test_debug_anomaly_trains_with_torchs_anomaly_detection_on(tmp_path):
    seen = []

    class Probe(L.Callback):
        def on_train_batch_end(self, *args):
            seen.append(torch.is_anomaly_enabled())

    cfg = composed("debug=anomaly", "trainer.max_steps=3", "trainer.val_every_n_steps=3")
    run(cfg, tmp_path, extra_callbacks=[Probe()])
    assert seen == [True, True, True]
    assert not torch.is_anomaly_enabled()  # and off again after the run


def test_train_scalars_reach_callbacks_such_as_early_stopping_on_train_loss(tmp_path):
    cfg = composed("trainer.max_steps=400", "trainer.val_every_n_steps=20", "logging.every_n_steps=10")
    stop = EarlyStopping("train/loss", mode="min", stopping_threshold=1.0, patience=10**9, check_on_train_epoch_end=False)
    run(cfg, tmp_path, extra_callbacks=[stop])
    losses = scalars(tmp_path, tags.metric("train", "loss"))
    assert stop.stopped_epoch == 0 and stop.stopping_reason_message and "train/loss" in stop.stopping_reason_message
    last_step = losses[-1][0]
    assert last_step < 390 and losses[-1][1] < 1.0  # stopped on the train loss, well before max_steps


@pytest.fixture(scope="module")
def script_results(tmp_path_factory, script_runs) -> dict:
    """scripts/train.py with debug=fdr, with debug=profiler, and resume= of a run that has finished, side by side,
    each a process of its own forked from the session's server that has made torch's imports (tests/script_runs.py)."""
    tmp = tmp_path_factory.mktemp("debug_runs")
    finished = tmp / "finished"
    cfg = composed("trainer.max_steps=20", "trainer.val_every_n_steps=10")
    (finished / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, finished / ".hydra" / "config.yaml")
    run(cfg, finished)
    before = sorted((p.relative_to(finished), p.stat().st_mtime_ns) for p in finished.rglob("*"))
    cases = {
        "fdr": [*SMALL, "logging.images_every_n_steps=100", "debug=fdr", f"hydra.run.dir={tmp}/fdr"],
        "profiler": [*SMALL, "debug=profiler", "trainer.max_steps=30", f"hydra.run.dir={tmp}/profiler"],
        "resume_finished": [f"resume={finished}"],
    }
    results = dict(zip(cases, script_runs.run(ROOT / "scripts" / "train.py", list(cases.values()), ROOT)))
    return {"tmp": tmp, "finished": finished, "before": before, **results}


def test_debug_fdr_is_a_dry_run_through_every_callback(script_results):
    result, run_dir = script_results["fdr"], script_results["tmp"] / "fdr"
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Dry run (trainer.fast_dev_run=1)" in result.stdout
    assert not (run_dir / "metrics.json").exists()  # nothing that could pass for a result
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    (events,) = run_dir.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    assert tags.attention(0, 0) in accumulator.Tags()["images"]  # the frame callback ran
    assert tags.ALIGN_BEST in accumulator.Tags()["scalars"]  # the alignment callback ran, on the one val batch
    assert [e.step for e in accumulator.Scalars(tags.metric("train", "loss"))] == [0]  # one training batch


def test_debug_profiler_writes_its_report_into_the_run_and_prints_its_top(script_results):
    result, run_dir = script_results["profiler"], script_results["tmp"] / "profiler"
    assert result.returncode == 0, result.stderr[-2000:]
    report = (run_dir / "fit-profile.txt").read_text()
    assert "run_training_batch" in report and "FIT Profiler Report" in report
    assert "Profile (" in result.stdout and "FIT Profiler Report" in result.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["val/seq_acc"] >= 0  # a real run otherwise


def test_resume_of_a_finished_run_says_so_and_writes_nothing(script_results):
    result, finished = script_results["resume_finished"], script_results["finished"]
    assert result.returncode == 0, result.stderr[-2000:]
    assert "has finished at step 20 (it reached trainer.max_steps=20)" in result.stdout
    assert f"resume={finished} trainer.max_steps=40" in result.stdout
    assert sorted((p.relative_to(finished), p.stat().st_mtime_ns) for p in finished.rglob("*")) == script_results["before"]


def test_a_run_writes_one_event_file(script_results):
    # fit, then the final validate: Lightning finalises the logger after each; the run still has one file.
    assert len(list(script_results["finished"].glob("events.out.tfevents.*"))) == 1
    assert len(list((script_results["tmp"] / "profiler").glob("events.out.tfevents.*"))) == 1
