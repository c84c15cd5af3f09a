"""Checks on the composed config, so that bad input stops before anything is built or written."""

import difflib
import functools
import importlib.util
import inspect
import sys
import tempfile
from numbers import Integral, Real
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf


class ConfigError(ValueError):
    """Bad user input: the message names the field and what is allowed."""


# Config groups whose configs need an optional extra (pyproject.toml): group -> (the plugin it needs, the extra).
EXTRAS = {"hparams_search": ("hydra_plugins.hydra_optuna_sweeper", "optuna")}


# The configs the code reads: every key of the composed config must be one some option of conf/ sets (or, under
# trainer, an argument of Lightning's Trainer). An editable install (README) keeps conf/ beside src/.
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# Trainer arguments attnlab sets itself, and the key that sets each: under trainer.* they are refused.
TRAINER_SET_BY = {
    "accelerator": "device (device=auto|cpu|gpu|mps|cpu_ddp|gpu_ddp)",
    "devices": "device.devices",
    "num_nodes": "hydra/launcher=slurm (one node per job)",
    "precision": "device.precision",
    "strategy": "device (device=cpu_ddp or gpu_ddp)",
    "logger": "logging.* (attnlab writes TensorBoard event files into the run directory)",
    "callbacks": "logging.* and trainer.stop_at (attnlab builds the callbacks)",
    "max_epochs": "trainer.max_steps (a run is one pass of max_steps fresh batches)",
    "limit_train_batches": "trainer.max_steps (a run is one pass of max_steps fresh batches)",
    "val_check_interval": "trainer.val_every_n_steps",
    "check_val_every_n_epoch": "trainer.val_every_n_steps",
    "log_every_n_steps": "logging.every_n_steps",
    "enable_progress_bar": "logging.progress_bar",
    "enable_checkpointing": "attnlab (checkpoints/last.ckpt, which resume=RUN_DIR needs)",
    "default_root_dir": "hydra.run.dir",
}
# Trainer arguments attnlab carries out itself rather than handing them to Lightning: clipping and accumulation in
# the manual optimisation step (module.py), a dry run and a repeated batch in train.py and data.py.
TRAINER_DONE_BY_ATTNLAB = ("gradient_clip_val", "gradient_clip_algorithm", "accumulate_grad_batches", "fast_dev_run", "overfit_batches")


def is_global(option: Path) -> bool:
    """A config that sets keys anywhere (`# @package _global_`: experiment, hparams_search, debug), not a section."""
    # A plugin's option (hydra/launcher=joblib) has no file in conf/: it is not one of ours, so not global.
    return option.is_file() and option.read_text().lstrip().startswith("# @package _global_")


@functools.cache
def option_keys(group: str, option: str) -> dict:
    """The top-level keys an option of a conf/ group sets, with its values (defaults list included)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml")) or {}


@functools.cache
def section_keys() -> dict[str, tuple[str, ...]]:
    """Per config section (data, model, ...: a group of conf/ whose options are not global), the keys its options
    set, in order of first appearance; and "" for the top level (train.yaml's own keys and the sections)."""
    sections = {}
    for group in sorted(p for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra"):
        options = sorted(group.glob("*.yaml"))
        if options and not any(is_global(o) for o in options):
            sections[group.name] = tuple(dict.fromkeys(k for o in options for k in option_keys(group.name, o.stem)))
    top = [k for k in option_keys(".", "train") if k not in ("defaults", "hydra")]
    return {"": (*top, *sections), **sections}


def data_keys(task: str) -> tuple[str, ...]:
    """The data.* keys of a task: its own fields (its constructor's arguments) and the DataModule's."""
    from attnlab.tasks import LOADER_FIELDS, TASKS  # here: tasks import this module

    return ("task", *inspect.signature(TASKS[task]).parameters, *LOADER_FIELDS[1:])


def unknown_key(key: str, section: str, allowed, where: str | None = None) -> ConfigError:
    """`error: data.seqlen is not a key of data (reverse): allowed ...; did you mean data.seq_len?`"""
    prefix = f"{section}." if section else ""
    name = f"{section} ({where})" if where else section or "the config"
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f"; did you mean {prefix}{close[0]}?" if close else ""
    return ConfigError(f"{prefix}{key} is not a key of {name}: allowed {', '.join(allowed)}{hint}")


def check_keys(cfg: DictConfig) -> None:
    """Every key of the composed config is one attnlab reads: a key it would ignore is bad input. The trainer
    section's keys beyond conf/trainer are Lightning's, checked by check_trainer (after Lightning's import)."""
    known = section_keys()
    for key in cfg:
        if key not in known[""]:
            raise unknown_key(key, "", known[""])
    for section, allowed in known.items():
        if not section or section not in cfg or section == "trainer":
            continue
        where = None
        if section == "data":
            from attnlab.tasks import TASKS

            if cfg.data.get("task") not in TASKS:
                continue  # make_task names the task that does not exist
            allowed, where = data_keys(cfg.data.task), cfg.data.task
        for key in cfg[section]:
            if key not in allowed:
                raise unknown_key(key, section, allowed, where)


def trainer_arguments(trainer: DictConfig) -> dict:
    """The trainer.* keys beyond conf/trainer's: Lightning Trainer arguments for Lightning (attnlab's own,
    TRAINER_DONE_BY_ATTNLAB, included), refusing those attnlab sets itself and those Lightning does not have."""
    from lightning.pytorch import Trainer  # here: seconds to import; run after the checks that need none

    ours = section_keys()["trainer"]
    lightning = [p for p in inspect.signature(Trainer.__init__).parameters if p not in ("self", *TRAINER_SET_BY, *ours)]
    extra = {}
    for key, value in trainer.items():
        if key in ours:
            continue
        if key in TRAINER_SET_BY:
            raise ConfigError(f"trainer.{key} is set by attnlab from {TRAINER_SET_BY[key]}: use that instead")
        if key not in lightning:
            raise unknown_key(key, "trainer", (*ours, *lightning), "attnlab's keys, then Lightning Trainer arguments")
        extra[key] = value
    if extra.get("gradient_clip_val") is not None:
        number(extra["gradient_clip_val"], "trainer.gradient_clip_val", "null or a number >= 0", lambda v: v >= 0)
    if extra.get("gradient_clip_algorithm") is not None:
        choice(extra["gradient_clip_algorithm"], "trainer.gradient_clip_algorithm", ("norm", "value"))
    if "accumulate_grad_batches" in extra:
        integer(extra["accumulate_grad_batches"], "trainer.accumulate_grad_batches")
    if extra.get("fast_dev_run") not in (None, False):
        integer(extra["fast_dev_run"], "trainer.fast_dev_run")  # True is 1
    if extra.get("overfit_batches") not in (None, 0):
        integer(extra["overfit_batches"], "trainer.overfit_batches (a number of batches)", minimum=0)
    return extra


def checked_arguments(arguments: list[str]) -> list[str]:
    """The command line's overrides checked against conf/ before Hydra composes them, so that what Hydra would
    refuse with a dozen lines (its config search path included) is one line here:
    - `group=option` (also swept: `data=copy,sort`) with an option the group does not have: a ConfigError;
    - `key=value` for a key the composed config will not have (Hydra: "Could not override"): handed on as
      `++key=value`, so that check_keys names it with its section's allowed keys and the closest one.
    Flags and hydra.* keys are left to Hydra."""
    from hydra._internal.config_repository import ConfigRepository
    from hydra._internal.utils import create_config_search_path
    from hydra.core.object_type import ObjectType
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for argument in arguments:
        override = None
        if "=" in argument and not argument.startswith(("-", "resume=")):  # resume=: attnlab's own (resume.py)
            try:
                override = parser.parse_override(argument)
            except HydraException:
                pass  # Hydra says what is wrong with its syntax
        parsed.append(override)

    searched = []
    for flag, following in zip(arguments, [*arguments[1:], ""]):  # --config-dir=DIR, --config-dir DIR, -cd DIR
        name, _, value = flag.partition("=")
        if name in ("--config-dir", "-cd"):
            searched.append(f"file://{Path(value or following).resolve()}")
    for override in parsed:
        if override is not None and override.key_or_group == "hydra.searchpath":
            searched += [str(path) for path in override.value()]
    repository = None
    # The options the run composes: train.yaml's defaults, then the command line's group choices and the
    # "override /group" lines of the global configs it adds (+experiment=...).
    defaults = {next(iter(d)): d[next(iter(d))] for d in option_keys(".", "train")["defaults"] if isinstance(d, dict)}
    chosen = {group: [option] for group, option in defaults.items()}
    extras = []  # the global configs added, (group, option)
    for override in parsed:
        if override is None or override.type == OverrideType.DEL or override.key_or_group.startswith("hydra."):
            continue
        group = override.key_or_group
        if repository is None:
            search_path = create_config_search_path(str(CONF_DIR))
            for extra in searched:  # hydra.searchpath=[...] and --config-dir: where Hydra looks for options too
                search_path.append("command-line", extra)
            repository = ConfigRepository(search_path)
        if not repository.group_exists(group):
            continue
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        options = group_options(repository, group)
        for value in values:
            if value not in options and value is not None:
                suite = str(value).rpartition("/")[0]  # +experiment=lengths/...: that folder's options
                listed = [o for o in options if suite and o.startswith(f"{suite}/")] or options
                raise ConfigError(f"{group}={value}: no such option; allowed: {', '.join(listed)}")
        if (CONF_DIR / group).is_dir() and all(is_global(CONF_DIR / group / f"{v}.yaml") for v in values):
            extras += [(group, v) for v in values]
        else:
            chosen[group] = values
    for group, option in extras:
        for entry in option_keys(group, option).get("defaults", []):
            if isinstance(entry, dict) and next(iter(entry)).startswith("override /"):
                chosen[next(iter(entry)).removeprefix("override /")] = [next(iter(entry.values()))]

    def present(section: str, key: str) -> bool:
        """Whether the composed config will have section.key whichever of the chosen options it is."""
        set_by_extras = any(key in (option_keys(g, o).get(section) or {}) for g, o in extras)
        options = chosen.get(section)
        if not options:
            return key in option_keys(".", "train") and not section
        return set_by_extras or all(key in option_keys(section, o) for o in options if (CONF_DIR / section / f"{o}.yaml").is_file())

    out = []
    for argument, override in zip(arguments, parsed):
        if override is not None and override.type == OverrideType.CHANGE and not override.key_or_group.startswith("hydra"):
            section, _, key = override.key_or_group.rpartition(".")
            if repository is not None and repository.group_exists(override.key_or_group):
                if override.key_or_group not in defaults:
                    argument = "+" + argument  # a group train.yaml does not choose (experiment=...) is added
            elif not present(section, key):
                argument = "++" + argument
        out.append(argument)
    return out


def group_options(repository, group: str) -> list[str]:
    """The options of a config group, those in its folders too (`experiment` has `lengths/copy`)."""
    from hydra.core.object_type import ObjectType

    options = list(repository.get_group_options(group, ObjectType.CONFIG))
    for folder in repository.get_group_options(group, ObjectType.GROUP):
        options += [f"{folder}/{o}" for o in group_options(repository, f"{group}/{folder}")]
    return options


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
    """Everything train.run needs from cfg outside the task (each task checks its own fields), after every key is
    known to be one attnlab reads."""
    check_keys(cfg)
    m = cfg.model
    integer(m.dim, "model.dim")
    integer(m.heads, "model.heads")
    if m.dim % m.heads:
        divisors = [h for h in range(1, m.dim + 1) if m.dim % h == 0]
        raise ConfigError(f"model.heads must divide model.dim={m.dim} (allowed: {divisors}), got {m.heads}")
    integer(m.layers, "model.layers")
    from attnlab.positions import SCHEMES  # here: torch, which the task check just after imports anyway

    choice(m.positions, "model.positions", SCHEMES)
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
    choice(cfg.get("loss", {}).get("attention_form", "rows"), "loss.attention_form", ("rows", "rasp"))
    integer(cfg.trainer.max_steps, "trainer.max_steps")
    integer(cfg.trainer.val_every_n_steps, "trainer.val_every_n_steps")
    if cfg.trainer.stop_at is not None:
        number(cfg.trainer.stop_at, "trainer.stop_at", "null or a number in (0, 1]", lambda v: 0 < v <= 1)
    integer(cfg.logging.every_n_steps, "logging.every_n_steps")
    integer(cfg.logging.images_every_n_steps, "logging.images_every_n_steps", minimum=0)
    integer(cfg.seed, "seed", minimum=0)
    if (checkpoint := cfg.get("checkpoint")) is not None:  # a config from before the group keeps last.ckpt only
        choice(checkpoint.get("schedule"), "checkpoint.schedule", ("last", "log", "every"))
        if checkpoint.schedule == "every":
            integer(checkpoint.get("every_n_steps"), "checkpoint.every_n_steps")
        elif checkpoint.get("every_n_steps") is not None:  # set on the command line, but no schedule reads it
            raise ConfigError(f"checkpoint.every_n_steps is read by checkpoint=every only (this run: checkpoint={checkpoint.schedule})")


def attention_loss(cfg: DictConfig, task) -> float:
    """loss.attention (checked in `check`; 0 where a config from before the `loss` section has none). Supervision
    needs a target pattern at some layer of the model: a ConfigError where the task has none there."""
    weight = float(cfg.get("loss", {}).get("attention", 0.0))
    if weight > 0:
        import torch  # here, not at the top: Hydra imports this module for every run, before torch is needed

        probe = task.sample(1, torch.Generator().manual_seed(0))[0]
        targets = [task.layer_targets(probe, layer) for layer in range(cfg.model.layers)]
        if all(target is None for target in targets):
            raise ConfigError(f"loss.attention must be 0 for {task.name} with model.layers={cfg.model.layers}: no "
                              f"target pattern to supervise, got {weight:g}")
        for layer, target in enumerate(targets):  # per-head targets: head h is supervised with target h
            if target is not None and target.dim() == 4 and target.shape[1] > cfg.model.heads:
                raise ConfigError(f"model.heads must be >= {target.shape[1]} for loss.attention with {task.name}: "
                                  f"layer {layer} supervises heads 0-{target.shape[1] - 1}, got {cfg.model.heads}")
    return weight


def val_lengths(data: DictConfig, task) -> list[int]:
    """data.val_lengths: null (one validation set, from the training distribution) or a non-empty list of distinct
    lengths, each in [the task's shortest, 1024], for a task whose examples have a length."""
    lengths = data.get("val_lengths")
    if lengths is None:
        return []
    if not task.has_length:
        raise ConfigError(f"data.val_lengths must be null for {task.name}: its examples have no length, got {lengths}")
    allowed = f"null or a non-empty list of distinct integers in [{task.shortest}, {task.longest}]"
    if not isinstance(lengths, (list, ListConfig)) or not lengths or len(set(map(str, lengths))) < len(lengths):
        raise ConfigError(f"data.val_lengths must be {allowed}, got {lengths}")
    for n in lengths:
        if isinstance(n, bool) or not isinstance(n, Integral) or not task.shortest <= n <= task.longest:
            raise ConfigError(f"data.val_lengths must be {allowed}, got {n!r} in {list(lengths)}")
    return [int(n) for n in lengths]


def check_memory(cfg: DictConfig, task) -> None:
    """The run fits in the memory this machine has left: the floor of what training and validation need
    (attnlab.memory.estimate) against MemAvailable or the memory cgroup's room. Refused with the key that sizes the
    largest part; nothing refused where the machine's memory cannot be read."""
    from attnlab import memory

    have = memory.available()
    need = memory.estimate(cfg, task)
    if have is not None and need.total > have[0]:
        key = need.largest()
        value = OmegaConf.select(cfg, key)
        raise ConfigError(
            f"{key}={value}: this run needs at least {memory.size(need.total)} of memory (training batch "
            f"{memory.size(need.batch)}, validation {memory.size(need.validation)}, model and optimiser "
            f"{memory.size(need.model)}), this machine has {memory.size(have[0])} available ({have[1]}); allowed: "
            f"a smaller {key}"
        )


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
