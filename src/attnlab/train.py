"""run(cfg, run_dir): build everything from the composed config, train, and leave a complete run directory."""

import json
import logging
import warnings
from pathlib import Path

import lightning.pytorch as L
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from attnlab import checkpoints, config, hparams, resume, sweep, tags, viz
from attnlab.alignment_callback import AlignmentScalars
from attnlab.callbacks import AttentionImages
from attnlab.data import TaskDataModule
from attnlab.guards import Diverged, Interrupted, StopOnDivergence, StopOnSignal
from attnlab.model import AttentionModel
from attnlab.module import AttentionLM
from attnlab.progress import RunProgress
from attnlab.ranks import FinalCheckpoint, RankRecord
from attnlab.tasks import make_task

METRICS_FILE = "metrics.json"
log = logging.getLogger(__name__)

# Lightning's CombinedLoader (around every dataloader) builds torch's LeafSpec, which torch 2.13 deprecates: a
# FutureWarning on every run that a user can do nothing about. Only that warning, only from there.
warnings.filterwarnings(
    "ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"
)


def build(cfg: DictConfig):
    """The task, model and data, checked before anything is written."""
    config.check(cfg)
    config.check_device(cfg.device)
    task = make_task(cfg.data)
    val_lengths = config.val_lengths(cfg.data, task)
    config.check_memory(cfg, task)  # before the model's weights, the first allocation
    m = cfg.model
    causal = task.causal if m.causal is None else m.causal
    # Positions for the longest input the run sees: the training length, or a longer validation length.
    length = task.positions(max([task.seq_len, *val_lengths])) if val_lengths else task.length
    if m.positions == "learned" and length > task.length:
        log.info(f"model.positions=learned: positions {task.length}-{length - 1} (data.val_lengths past data.seq_len="
                 f"{task.seq_len}) never train; their rows keep their initial values, as a length study measures")
    model = AttentionModel(task.vocab, length, m.dim, m.heads, m.layers, m.positions, causal, m.mlp, m.norm,
                           padding=getattr(task, "padding", None))
    extra = config.trainer_arguments(cfg.trainer)
    clipping = {k: extra[k] for k in ("gradient_clip_val", "gradient_clip_algorithm") if k in extra}
    accumulate = extra.get("accumulate_grad_batches", 1)
    module = AttentionLM(
        model, **cfg.optim, attention_loss=config.attention_loss(cfg, task), task=task, **clipping,
        accumulate_grad_batches=accumulate, attention_form=cfg.get("loss", {}).get("attention_form", "rows"),
    )
    data = TaskDataModule(
        task, cfg.data.batch_size, cfg.data.val_size, cfg.seed, accumulate, extra.get("overfit_batches") or 0,
        val_lengths,
    )
    return task, module, data


def dry_run(cfg: DictConfig) -> DictConfig:
    """trainer.fast_dev_run=N: N training batches and N validation batches through everything a run does
    (scalars, frames, alignment, the checkpoint), then stop. Not Lightning's own fast_dev_run, which switches the
    logger and checkpointing off: here the point is to see them work. cfg as it is without it."""
    n = int(cfg.trainer.get("fast_dev_run") or 0)
    if not n:
        return cfg
    cfg = cfg.copy()
    cfg.trainer.max_steps = cfg.trainer.val_every_n_steps = n
    cfg.trainer.stop_at = None
    cfg.logging.every_n_steps = 1
    if cfg.logging.images_every_n_steps:
        cfg.logging.images_every_n_steps = n
    return cfg


class RunLogger(TensorBoardLogger):
    """TensorBoardLogger writing one event file per process. Lightning finalises its logger at the end of fit and
    again after validate, and the SummaryWriter it closes there opens a new file at its next write (a run had
    three). Here finalize only flushes; run() closes the writer once, when the run is done however it ends."""

    def finalize(self, status: str) -> None:
        if self._experiment is not None:
            self.experiment.flush()
        if status == "success":
            self.save()

    def close(self) -> None:
        if self._experiment is not None:
            self.experiment.close()


# Lightning's profilers by trainer.profiler's name: made here to write their report into the run directory.
PROFILERS = {"simple": "SimpleProfiler", "advanced": "AdvancedProfiler", "pytorch": "PyTorchProfiler"}
PROFILE_FILE = "fit-profile.txt"  # what a profiler made with filename="profile" writes for fit()


def make_trainer(cfg: DictConfig, run_dir: Path, logger, callbacks: list, extra: dict, accumulate: int) -> L.Trainer:
    """The Trainer for cfg: attnlab's settings, then `extra`, the trainer.* arguments for Lightning. A value
    Lightning refuses is a ConfigError with Lightning's reason."""
    try:
        return L.Trainer(
            accelerator=cfg.device.accelerator,
            devices=cfg.device.devices,
            precision=cfg.device.precision,
            strategy=cfg.device.get("strategy", "auto"),  # ddp_spawn in the multi-process device options
            max_steps=cfg.trainer.max_steps,
            max_epochs=-1,  # one "epoch" of max_steps fresh batches (see data.Batches)
            val_check_interval=cfg.trainer.val_every_n_steps * accumulate,  # counted in batches, not steps
            check_val_every_n_epoch=None,
            num_sanity_val_steps=0,
            log_every_n_steps=cfg.logging.every_n_steps,
            logger=logger,
            callbacks=callbacks,
            enable_model_summary=False,
            enable_progress_bar=cfg.logging.progress_bar,
            default_root_dir=run_dir,
            **extra,
        )
    except (MisconfigurationException, ValueError, TypeError) as error:
        given = ", ".join(f"trainer.{k}={v}" for k, v in cfg.trainer.items() if k in extra)
        raise config.ConfigError(f"{given}: Lightning refuses it: {str(error).strip().splitlines()[0]}") from None


def log_config(logger, cfg: DictConfig, step: int) -> None:
    """The run's resolved config, as text in its event file."""
    logger.experiment.add_text(tags.CONFIG, "    " + OmegaConf.to_yaml(cfg, resolve=True).replace("\n", "\n    "), global_step=step)


def run_callbacks(cfg: DictConfig, task, data, run_dir: Path) -> list[L.Callback]:
    """A run's callbacks (also each stacked member's, attnlab.stacked): checkpoint, lr, alignment, signals,
    divergence, frames, progress bar, early stop."""
    stopper = StopOnSignal()
    hint = f"Try a lower optim.lr (now {cfg.optim.lr:g}) or a warm-up (optim.warmup_steps, now {cfg.optim.warmup_steps})."
    callbacks = [
        # checkpoints/last.ckpt at every validation (written atomically, overwriting the one before), so a crash
        # loses at most trainer.val_every_n_steps steps; and once more after fit (below) for the final weights.
        ModelCheckpoint(
            dirpath=run_dir / resume.CHECKPOINT.parent, filename=resume.CHECKPOINT.stem, save_top_k=1,
            enable_version_counter=False,
        ),
        LearningRateMonitor(logging_interval="step"),
        AlignmentScalars(task),
        stopper,
        StopOnDivergence(cfg.logging.every_n_steps, cfg.trainer.val_every_n_steps, hint),
    ]
    if (steps := checkpoints.callback(cfg, run_dir)) is not None:  # checkpoint=log|every: step=N.ckpt beside last
        callbacks.append(steps)
    if cfg.logging.images_every_n_steps:
        scale = cfg.logging.weight_scale or viz.default_weight_scale(cfg.model.dim)
        # The training distribution's probe, and with data.val_lengths one per length (the Attention tab's selector).
        probes = {n: data.probe(n) for n in [None, *data.val_lengths]}
        targets = {n: [task.layer_targets(probe[0], layer) for layer in range(cfg.model.layers)]
                   for n, probe in probes.items()}
        at_lengths = {n: (probes[n], targets[n]) for n in data.val_lengths}
        callbacks.append(
            AttentionImages(
                probes[None], task.token_names(), cfg.logging.images_every_n_steps, cfg.logging.histograms, scale,
                targets[None], at_lengths,
            )
        )
    if cfg.device.get("strategy", "auto") != "auto":  # several processes: each writes what it trains with
        callbacks += [RankRecord(run_dir), FinalCheckpoint(run_dir / resume.CHECKPOINT)]
    if cfg.logging.progress_bar:
        # Redrawn every 20 steps (10 times a second at the default size): each redraw re-reads the logged metrics,
        # ~0.4 ms, which Lightning's default bar does at every step: 7% of a default-size step, enough to see in
        # the bar's hooks under python scripts/train.py debug=profiler.
        callbacks.append(RunProgress(refresh_rate=20))
    if cfg.trainer.stop_at is not None:
        callbacks.append(EarlyStopping("val/seq_acc", mode="max", stopping_threshold=cfg.trainer.stop_at, patience=10**9))
    return callbacks


def diverged(error: Diverged, run_dir: Path) -> Diverged:
    """The Diverged a run ends with: the guard's message and which weights the run's checkpoint keeps."""
    last = run_dir / resume.CHECKPOINT
    kept = "No checkpoint had been saved yet"
    if last.is_file():
        kept = f"{last} keeps the weights of step {resume.load_checkpoint(last)['global_step']}"
    return Diverged(f"{error} {kept}.")


def run(cfg: DictConfig, run_dir: Path, extra_callbacks: list[L.Callback] = ()) -> dict[str, float]:
    """Train as cfg says, writing event files, checkpoints/last.ckpt and metrics.json into run_dir.
    Returns the final validation metrics. `extra_callbacks` are added to the trainer's (scripts/bench.py times
    steps with one). With cfg.ckpt_path, training goes on from that checkpoint's step; with cfg.init_from, it starts
    at step 0 from that run's weights. Raises guards.Interrupted
    (on SIGINT/SIGTERM, after saving a checkpoint) and guards.Diverged (NaN/inf loss)."""
    if (trained := sweep.trained_outcome(run_dir)) is not None:  # a stacked launcher trained it, with its group
        return trained()
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # first: the initial weights are drawn in build
    cfg = dry_run(cfg)
    task, module, data = build(cfg)
    extra = {k: v for k, v in config.trainer_arguments(cfg.trainer).items() if k not in config.TRAINER_DONE_BY_ATTNLAB}
    if cfg.trainer.get("fast_dev_run"):
        extra["limit_val_batches"] = int(cfg.trainer.fast_dev_run)
    if isinstance(extra.get("profiler"), str) and extra["profiler"] in PROFILERS:
        import lightning.pytorch.profilers as profilers

        extra["profiler"] = getattr(profilers, PROFILERS[extra["profiler"]])(dirpath=run_dir, filename="profile")
    ckpt_path, start_step = cfg.get("ckpt_path"), 0
    if ckpt_path:
        checkpoint = resume.load_checkpoint(ckpt_path)
        resume.check_matches(checkpoint, module, ckpt_path)
        start_step = checkpoint["global_step"]
        del checkpoint
    elif cfg.get("init_from"):  # another run's weights alone: step 0, a fresh optimiser, schedule and data stream
        resume.load_weights(module, cfg.init_from)

    # purge_step: on resume TensorBoard hides what the stopped process logged after its checkpoint (Lightning logs
    # step s's scalars at s-1, so those are steps >= the checkpoint's), and the curves go on without a fold.
    logger = RunLogger(
        run_dir, name="", version="", default_hp_metric=False, purge_step=start_step if ckpt_path else None
    )
    try:
        callbacks = run_callbacks(cfg, task, data, run_dir)
        stopper = next(c for c in callbacks if isinstance(c, StopOnSignal))
        # Before anything is written: a Trainer argument Lightning refuses leaves no run behind.
        trainer = make_trainer(cfg, run_dir, logger, callbacks + list(extra_callbacks), extra, module.accumulate_grad_batches)
        log_config(logger, cfg, start_step)
        try:
            # weights_only: the checkpoint is loaded as tensors and plain values, never as arbitrary pickled objects.
            with warnings.catch_warnings():
                if ckpt_path:  # going on from a checkpoint: its directory is expected to hold one (in place), or
                    # to be another run's, whose callback state (best/last paths) is of no use here
                    warnings.filterwarnings("ignore", r"Checkpoint directory .* exists and is not empty")
                    warnings.filterwarnings("ignore", r"The dirpath has changed from")
                trainer.fit(module, datamodule=data, ckpt_path=ckpt_path or None, weights_only=True)
        except Diverged as error:
            raise diverged(error, run_dir) from None
        except SystemExit:  # Lightning's answer to a second Ctrl+C: stopped at once, without saving
            if stopper.signum is None:
                raise
            last = run_dir / resume.CHECKPOINT
            saved = resume.load_checkpoint(last)["global_step"] if last.is_file() else None
            raise Interrupted(stopper.signum, trainer.global_step, saved) from None
        if trainer.world_size == 1:
            # The weights training ended with, whatever the step, with the optimiser and loop state to resume from
            # (weights_only=False, said: Lightning logs a line when left to default to it).
            trainer.save_checkpoint(run_dir / resume.CHECKPOINT, weights_only=False)
        else:
            # ddp_spawn: rank 0 saved the final checkpoint (ranks.FinalCheckpoint); this process got the weights back
            # but not the loop state: take the step from that checkpoint, for the final validation and HParams.
            loops = resume.load_checkpoint(run_dir / resume.CHECKPOINT)["loops"]
            trainer.fit_loop.load_state_dict(loops["fit_loop"])
        if stopper.stopped_at is not None:
            logger.finalize("interrupted")
            raise Interrupted(stopper.signum, trainer.global_step, trainer.global_step)

        # Score the final weights once more, whatever step training stopped at, so metrics.json is the model saved.
        scorer = trainer
        if trainer.world_size > 1:
            # ddp_spawn would start its processes again (seconds each) for a set one process scores in milliseconds:
            # score it here, with the same callbacks and logger, at the step training ended (for TensorBoard).
            scorer = L.Trainer(
                accelerator=cfg.device.accelerator, devices=1, precision=cfg.device.precision, logger=logger,
                # the run's own callbacks, its progress line among them where it has one (Lightning refuses that
                # with enable_progress_bar=False); the line draws nothing for a validation
                callbacks=trainer.callbacks, enable_model_summary=False, enable_progress_bar=cfg.logging.progress_bar,
                default_root_dir=run_dir,
            )
            scorer.fit_loop.load_state_dict(loops["fit_loop"])
        # One dict per validation set (data.val_lengths adds sets), each metric under its own name.
        final = {name: float(value) for scores in scorer.validate(module, datamodule=data, verbose=False)
                 for name, value in scores.items()}
        return finish(logger, cfg, final, trainer.global_step, run_dir)
    finally:
        logger.close()  # the run's one event file, whichever way the run ended


def finish(logger, cfg: DictConfig, final: dict[str, float], step: int, run_dir: Path) -> dict[str, float]:
    """A trained run's last records (a stacked member's too): HParams with its final metrics, metrics.json."""
    hparams.log(logger, cfg, final, step, hparams.differing_keys())  # the keys a sweep varies first
    logger.finalize("success")
    # The step the final weights are of: where trainer.stop_at was reached, else max_steps. Not an HParams
    # metric (logged above without it); the sweep summary reads how many steps each seed took (attnlab.seeds).
    final["step"] = step
    if not cfg.trainer.get("fast_dev_run"):  # a dry run's scores are no result: nothing that could pass for one
        (run_dir / METRICS_FILE).write_text(json.dumps(final, indent=2) + "\n")
    return final
