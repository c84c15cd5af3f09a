"""Every option of every config group composes, and builds (or fails with a clear message where the hardware
it names is missing)."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from attnlab.config import ConfigError
from attnlab.train import build

CONF = Path(__file__).resolve().parents[1] / "conf"
IN_DEFAULTS = {"data", "model", "optim", "trainer", "loss", "logging", "checkpoint", "device", "debug"}
OPTIONS = [
    (group.name, option.relative_to(group).with_suffix("").as_posix())  # experiment=lengths/copy: its folder's
    for group in sorted(CONF.iterdir())
    if group.is_dir() and group.name != "hydra"
    for option in sorted(group.rglob("*.yaml"))
]


def composed(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra)


def test_every_group_has_options():
    assert IN_DEFAULTS <= {group for group, _ in OPTIONS}


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_builds(group, option):
    prefix = "" if group in IN_DEFAULTS else "+"
    cfg = composed(f"{prefix}{group}={option}")
    missing = {"gpu": not torch.cuda.is_available(), "mps": not torch.backends.mps.is_available()}
    if group == "device" and missing.get(cfg.device.accelerator, False):
        with pytest.raises(ConfigError, match=f"device={cfg.device.accelerator}: no"):  # gpu_ddp: "device=gpu: no"
            build(cfg)
        return
    task, module, data = build(cfg)
    inputs, targets, mask = data.task.sample(2, torch.Generator().manual_seed(0))
    logits, _ = module(inputs)
    assert logits.shape == (*inputs.shape, task.vocab)


def test_defaults():
    cfg = composed(hydra=True)
    assert cfg.data.task == "reverse"
    dirs = OmegaConf.to_container(cfg.hydra, resolve=False)
    assert dirs["run"]["dir"].startswith("outputs/")
    assert dirs["sweep"]["dir"].startswith("outputs/multirun/")
    assert dirs["sweep"]["subdir"] == "${hydra:job.override_dirname}"


def test_command_line_sizes_reach_the_model():
    cfg = composed("model.dim=64", "model.heads=4", "model.layers=2", "data=sort", "data.seq_len=5")
    task, module, data = build(cfg)
    assert module.model.embedding.embedding_dim == 64
    assert len(module.model.blocks) == 2 and module.model.blocks[0].attention.heads == 4
    assert task.name == "sort" and task.seq_len == 5
