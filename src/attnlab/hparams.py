"""A run's entry in TensorBoard's HParams tab: its config flattened ("model/heads") with its final metrics, the keys
its job overrides marked as the ones that differ between runs.

TensorBoard orders the hparams of the experiment config it finds by `differs` first, then by name, and its HParams
tab ticks the first five hparams and the first five metrics for display (tf-hparams-query-pane). Without the flag
it ticks data/batch_size, data/seq_len, ... whatever a sweep varied. Which keys differ: the job's Hydra overrides
(`python scripts/train.py -m model.heads=1,2` gives each job `model.heads=<value>`); a run outside Hydra has none.
"""

from omegaconf import DictConfig, OmegaConf
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from attnlab import tags

# The final metrics shown first, in this order; the others (per-head alignment and entropy) after them.
FIRST_METRICS = [tags.metric("val", name) for name in tags.METRICS] + [tags.ALIGN_BEST]


def job_overrides() -> list[str]:
    """This job's command-line overrides ("model.heads=2", "+experiment=induction"), or none outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def flatten(config: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """{"model": {"heads": 2}} -> {"model/heads": 2}; what TensorBoard cannot show as a value (None, lists) as text."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def overridden(keys, overrides: list[str]) -> set[str]:
    """The flat keys the overrides set: `model.heads=2` sets model/heads, a group (`data=sort`) every data/ key."""
    prefixes = [o.split("=", 1)[0].lstrip("+~").replace(".", "/") for o in overrides]
    return {key for key in keys for p in prefixes if key == p or key.startswith(p + "/")}


def log(logger, cfg: DictConfig, metrics: dict[str, float], step: int, overrides: list[str]) -> None:
    """What Lightning's TensorBoardLogger.log_hyperparams(cfg, metrics) writes (the final metrics as scalars at
    `step`, and the experiment, session start and session end summaries), with the overridden keys listed first and
    flagged as differing, and the validation metrics first."""
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    differing = overridden(params, overrides)
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
