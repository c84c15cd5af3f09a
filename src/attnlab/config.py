"""Checks on the composed config, so that bad input stops before anything is built or written."""

import importlib.util
import sys
import tempfile
from numbers import Integral, Real
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class ConfigError(ValueError):
    """Bad user input: the message names the field and what is allowed."""


# Config groups whose configs need an optional extra (pyproject.toml): group -> (the plugin it needs, the extra).
EXTRAS = {"hparams_search": ("hydra_plugins.hydra_optuna_sweeper", "optuna")}


def check_extras(arguments: list[str]) -> None:
    """A ConfigError for an override that needs an extra not installed, instead of Hydra's "Could not find
    'hydra/sweeper/optuna'"."""
    for argument in arguments:
        group = argument.lstrip("+~").split("=", 1)[0]
        if group in EXTRAS and importlib.util.find_spec(EXTRAS[group][0]) is None:
            plugin, extra = EXTRAS[group]
            raise ConfigError(f"{group} needs {plugin}, which is not installed: pip install -e '.[{extra}]'")


def integer(value, field: str, minimum: int = 1, maximum: int | None = None) -> int:
    """`value` as an int within [minimum, maximum], or a ConfigError naming `field`."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigError(f"{field} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ConfigError(f"{field} must be {allowed}, got {value}")
    return int(value)


def number(value, field: str, allowed: str, within) -> float:
    """`value` as a float for which within(value) holds, or a ConfigError naming `field` and `allowed`."""
    if isinstance(value, bool) or not isinstance(value, Real) or not within(value):
        raise ConfigError(f"{field} must be {allowed}, got {value!r}")
    return float(value)


def choice(value, field: str, allowed) -> str:
    if value not in allowed:
        raise ConfigError(f"{field} must be one of {', '.join(map(str, allowed))}, got {value!r}")
    return value


def check(cfg: DictConfig) -> None:
    """Everything train.run needs from cfg outside the task (each task checks its own fields)."""
    m = cfg.model
    integer(m.dim, "model.dim")
    integer(m.heads, "model.heads")
    if m.dim % m.heads:
        divisors = [h for h in range(1, m.dim + 1) if m.dim % h == 0]
        raise ConfigError(f"model.heads must divide model.dim={m.dim} (allowed: {divisors}), got {m.heads}")
    integer(m.layers, "model.layers")
    choice(m.positions, "model.positions", ("learned", "sinusoidal", "none"))
    choice(m.causal, "model.causal", (None, True, False))
    choice(m.mlp, "model.mlp", (True, False))
    choice(m.norm, "model.norm", (True, False))
    if cfg.device.get("threads") is not None:
        integer(cfg.device.threads, "device.threads")
    integer(cfg.data.batch_size, "data.batch_size")
    integer(cfg.data.val_size, "data.val_size")
    number(cfg.optim.lr, "optim.lr", "a number > 0", lambda v: v > 0)
    number(cfg.optim.weight_decay, "optim.weight_decay", "a number >= 0", lambda v: v >= 0)
    integer(cfg.optim.warmup_steps, "optim.warmup_steps", minimum=0)
    choice(cfg.optim.schedule, "optim.schedule", ("constant", "cosine"))
    number(cfg.get("loss", {}).get("attention", 0.0), "loss.attention", "a number >= 0", lambda v: v >= 0)
    integer(cfg.trainer.max_steps, "trainer.max_steps")
    integer(cfg.trainer.val_every_n_steps, "trainer.val_every_n_steps")
    if cfg.trainer.stop_at is not None:
        number(cfg.trainer.stop_at, "trainer.stop_at", "null or a number in (0, 1]", lambda v: 0 < v <= 1)
    integer(cfg.logging.every_n_steps, "logging.every_n_steps")
    integer(cfg.logging.images_every_n_steps, "logging.images_every_n_steps", minimum=0)
    integer(cfg.seed, "seed", minimum=0)


def attention_loss(cfg: DictConfig, task) -> float:
    """loss.attention (checked in `check`; 0 where a config from before the `loss` section has none). Supervision
    needs a target pattern at some layer of the model: a ConfigError where the task has none there."""
    weight = float(cfg.get("loss", {}).get("attention", 0.0))
    if weight > 0:
        import torch  # here, not at the top: Hydra imports this module for every run, before torch is needed

        probe = task.sample(1, torch.Generator().manual_seed(0))[0]
        if all(task.target_attention(probe, layer) is None for layer in range(cfg.model.layers)):
            raise ConfigError(f"loss.attention must be 0 for {task.name} with model.layers={cfg.model.layers}: no "
                              f"target pattern to supervise, got {weight:g}")
    return weight


def check_device(device: DictConfig) -> None:
    """The accelerator asked for exists on this machine."""
    import torch  # here: config checks that need no torch run before its import (seconds)

    if device.accelerator == "gpu" and not torch.cuda.is_available():
        raise ConfigError("device=gpu: no CUDA GPU found on this machine; use device=cpu or device=auto")
    if device.accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps: no Apple MPS device found on this machine; use device=cpu or device=auto")


def writable_dir(path, field: str) -> None:
    """Makes the directory `path` (and its parents) and writes a file in it, or a ConfigError naming `field`."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(f"{field}: cannot write to {path} ({reason}); allowed: a directory that can be made and written") from None


class OutputDirCheck(Callback):
    """Hydra callback (conf/train.yaml): the run or sweep directory can be made and written, checked before Hydra
    makes it (Hydra's own failure there is a traceback)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self.check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def check(path, field: str) -> None:
        try:
            writable_dir(path, field)
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)  # SystemExit, which Hydra lets through: one line, no traceback
