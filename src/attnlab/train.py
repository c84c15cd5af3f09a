"""run(cfg, run_dir): build everything from the composed config, train, and leave a complete run directory."""

import json
import math
from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from attnlab import config, tags
from attnlab.alignment_callback import AlignmentScalars
from attnlab.callbacks import AttentionImages
from attnlab.config import ConfigError
from attnlab.data import TaskDataModule
from attnlab.model import AttentionModel
from attnlab.module import AttentionLM
from attnlab.tasks import make_task

METRICS_FILE = "metrics.json"


def check_device(device: DictConfig) -> None:
    if device.accelerator == "gpu" and not torch.cuda.is_available():
        raise ConfigError("device=gpu: no CUDA GPU found on this machine; use device=cpu or device=auto")
    if device.accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps: no Apple MPS device found on this machine; use device=cpu or device=auto")


def build(cfg: DictConfig):
    """The task, model and data, checked before anything is written."""
    config.check(cfg)
    check_device(cfg.device)
    task = make_task(cfg.data)
    m = cfg.model
    causal = task.causal if m.causal is None else m.causal
    model = AttentionModel(task.vocab, task.length, m.dim, m.heads, m.layers, m.positions, causal, m.mlp, m.norm)
    module = AttentionLM(model, **cfg.optim)
    data = TaskDataModule(task, cfg.data.batch_size, cfg.data.val_size, cfg.seed)
    return task, module, data


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Train as cfg says, writing event files, checkpoints/last.ckpt and metrics.json into run_dir.
    Returns the final validation metrics."""
    task, module, data = build(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    logger = TensorBoardLogger(run_dir, name="", version="", default_hp_metric=False)
    logger.experiment.add_text(tags.CONFIG, "    " + OmegaConf.to_yaml(cfg, resolve=True).replace("\n", "\n    "))
    callbacks = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0),
        LearningRateMonitor(logging_interval="step"),
        AlignmentScalars(task),
    ]
    if cfg.logging.images_every_n_steps:
        scale = cfg.logging.weight_scale or 4 / math.sqrt(cfg.model.dim)
        probe = data.probe()
        targets = [task.target_attention(probe[0], layer) for layer in range(cfg.model.layers)]
        callbacks.append(
            AttentionImages(
                probe, task.token_names(), cfg.logging.images_every_n_steps, cfg.logging.histograms, scale, targets
            )
        )
    if cfg.trainer.stop_at is not None:
        callbacks.append(EarlyStopping("val/seq_acc", mode="max", stopping_threshold=cfg.trainer.stop_at, patience=10**9))

    trainer = L.Trainer(
        accelerator=cfg.device.accelerator,
        devices=cfg.device.devices,
        precision=cfg.device.precision,
        max_steps=cfg.trainer.max_steps,
        max_epochs=-1,  # one endless "epoch" of fresh batches; max_steps ends it
        val_check_interval=cfg.trainer.val_every_n_steps,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.logging.every_n_steps,
        logger=logger,
        callbacks=callbacks,
        enable_model_summary=False,
        enable_progress_bar=cfg.logging.progress_bar,
        default_root_dir=run_dir,
    )
    trainer.fit(module, datamodule=data)

    # Score the final weights once more, whatever step training stopped at, so metrics.json is the model saved.
    (final,) = trainer.validate(module, datamodule=data, verbose=False)
    final = {name: float(value) for name, value in final.items()}
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True), metrics=final, step=trainer.global_step)
    logger.finalize("success")
    (run_dir / METRICS_FILE).write_text(json.dumps(final, indent=2) + "\n")
    return final
