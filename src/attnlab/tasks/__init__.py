"""The toy tasks, by the name used in conf/data/*.yaml (`data.task`)."""

from omegaconf import DictConfig

from attnlab.config import ConfigError
from attnlab.tasks.base import Batch, Task
from attnlab.tasks.copy import Copy
from attnlab.tasks.histogram import Histogram
from attnlab.tasks.induction import Induction
from attnlab.tasks.majority import Majority
from attnlab.tasks.modular_addition import ModularAddition
from attnlab.tasks.mqar import MQAR
from attnlab.tasks.rasp import SUITE as RASP_SUITE
from attnlab.tasks.reverse import Reverse
from attnlab.tasks.selective_copy import SelectiveCopy
from attnlab.tasks.sort import Sort

TASKS: dict[str, type[Task]] = {
    task.name: task
    for task in (Copy, Reverse, Sort, Histogram, Majority, MQAR, Induction, SelectiveCopy, ModularAddition, *RASP_SUITE)
}

# data.* fields that configure the DataModule rather than the task.
LOADER_FIELDS = ("task", "batch_size", "val_size", "val_lengths")


def make_task(data: DictConfig) -> Task:
    """The task named by data.task, built from the remaining data.* fields (each task checks its own)."""
    if data.task not in TASKS:
        raise ConfigError(f"data.task must be one of {', '.join(TASKS)}, got {data.task!r}")
    fields = {k: v for k, v in data.items() if k not in LOADER_FIELDS}
    try:
        return TASKS[data.task](**fields)
    except TypeError as error:  # a field this task does not take, or one it needs
        raise ConfigError(f"data: {data.task} {error}") from None


__all__ = ["TASKS", "Batch", "Task", "make_task"]
