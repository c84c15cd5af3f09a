"""A run's entry in TensorBoard's HParams tab: its config flattened ("model/heads") with its final metrics, the keys
that differ between the runs of its sweep marked so.

TensorBoard orders the hparams of the experiment config it finds by `differs` first, then by name, and its HParams
tab ticks the first five hparams and the first five metrics for display (tf-hparams-query-pane). Without the flag
it ticks the first five by name (ckpt_path, data/...), whatever a sweep varied.
Which keys differ: those the sweep's command line sweeps over (`-m model.heads=1,2` -> model/heads), from the
multirun.yaml Hydra's basic sweeper writes into the sweep directory, and those its sweeper searches
(hydra.sweeper.params: the Optuna search); for a run of its own, those its command line overrides.
"""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from attnlab import tags

# The final metrics shown first, in this order; the others (per-head alignment and entropy) after them.
FIRST_METRICS = [tags.metric("val", name) for name in tags.METRICS] + [tags.ALIGN_BEST]


def differing_keys() -> list[str]:
    """The config keys ("model.heads") in which this run differs from the other runs of its sweep, or, outside a
    sweep, from a run of the defaults; none outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return []
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return [o.split("=", 1)[0] for o in hydra.overrides.task]
    sweep_file = Path(hydra.sweep.dir) / "multirun.yaml"  # the sweep's own command line, "model.heads=1,2" and all
    command = OmegaConf.load(sweep_file).hydra.overrides.task if sweep_file.is_file() else []
    swept = [o.key_or_group for o in OverridesParser.create().parse_overrides(list(command)) if o.is_sweep_override()]
    return swept + list(hydra.sweeper.get("params") or {})


def flatten(config: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """{"model": {"heads": 2}} -> {"model/heads": 2}; what TensorBoard cannot show as a value (None, lists) as text."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def overridden(keys, names: list[str]) -> set[str]:
    """The flat keys that config keys or groups name: `model.heads` is model/heads, a group (`data`) every data/
    key; `+`/`~` prefixes aside."""
    prefixes = [name.lstrip("+~").replace(".", "/") for name in names]
    return {key for key in keys for p in prefixes if key == p or key.startswith(p + "/")}


def log(logger, cfg: DictConfig, metrics: dict[str, float], step: int, differing: list[str]) -> None:
    """What Lightning's TensorBoardLogger.log_hyperparams(cfg, metrics) writes (the final metrics as scalars at
    `step`, and the experiment, session start and session end summaries), with the `differing` keys ("model.heads",
    groups too) listed first and flagged, and the validation metrics first."""
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    differing = overridden(params, differing)
    params = {key: params[key] for key in sorted(params, key=lambda key: key not in differing)}  # stable: config order
    metrics = {**{m: metrics[m] for m in FIRST_METRICS if m in metrics}, **metrics}
    logger.log_metrics(metrics, step)
    experiment, session_start, session_end = hparams_summaries(params, metrics)
    value = experiment.value[0]
    data = HParamsPluginData.FromString(value.metadata.plugin_data.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in differing
    value.metadata.plugin_data.content = data.SerializeToString()
    writer = logger.experiment.file_writer
    for summary in (experiment, session_start, session_end):
        writer.add_summary(summary, step)
