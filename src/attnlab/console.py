"""A run's console besides its progress line (attnlab.progress): each notice once, no advertisement. The run's log
file keeps every notice. Hydra's job logging (conf/hydra/job_logging/attnlab.yaml) sets up both and imports the
filter below for every job: nothing heavy here."""

import logging


class Drop(logging.Filter):
    """A logging filter that drops the records whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: list[str]):
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


class FirstJobOnly(Drop):
    """A logging filter that drops the records starting with one of `prefixes` in every job of a sweep but its first
    (hydra.job.num 0): what is the same for every job, such as the devices Lightning finds, is said once. Made anew
    for each job, as Hydra sets up the job's logging after its HydraConfig."""

    def __init__(self, prefixes: list[str]):
        super().__init__(prefixes)
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra = HydraConfig.get() if HydraConfig.initialized() else None
        self.later_job = hydra is not None and hydra.mode == RunMode.MULTIRUN and (hydra.job.num or 0) > 0

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.later_job or super().filter(record)


def one_handler_for_lightning() -> None:
    """Lightning's top package adds a console handler of its own as it is imported, beside the root logger's that
    Hydra's job logging sets up: each of its notices was printed twice. Where the root logger has handlers,
    Lightning's records go to those alone (as Lightning decides for its lightning.pytorch logger, not for the
    package's). Called once Lightning is imported."""
    import lightning

    if logging.getLogger().handlers:
        logging.getLogger("lightning").removeHandler(getattr(lightning, "_console", None))


def duration(seconds: float) -> str:
    """42.1 s, 12 min 05 s, 2 h 05 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def learned(metrics: dict[str, float], wall_s: float, start_step: int = 0, max_steps: int | None = None) -> str:
    """What a run learned, one line for the end of its output (metrics: what attnlab.train.run returns), with the
    steps this process trained: from `start_step` (a checkpoint's, when going on from one) to the step it ended at.

        Trained 1460 steps in 42.1 s: val/loss 0.00112 · val/seq_acc 1.000 · align/best 0.982
        Trained 2545 steps (from step 455 to 3000) in 27.3 s: ...
        Trained 0 steps: the checkpoint is at step 3000, where trainer.max_steps=3000 ends training (raise it to train on from there). Its
        scores: ...

    align/best only where the task has a target pattern to align with."""
    from attnlab import tags

    shown = [(tags.metric("val", "loss"), ".3g"), (tags.metric("val", "seq_acc"), ".3f"), (tags.ALIGN_BEST, ".3f")]
    scores = " · ".join(f"{name} {metrics[name]:{spec}}" for name, spec in shown if name in metrics)
    step = int(metrics["step"])
    if step <= start_step:
        why = ""
        if max_steps is not None and step >= max_steps:
            why = f", where trainer.max_steps={max_steps} ends training (raise it to train on from there)"
        return f"Trained 0 steps: the checkpoint is at step {step}{why}. Its scores: {scores}"
    span = f" (from step {start_step} to {step})" if start_step else ""
    return f"Trained {step - start_step} steps{span} in {duration(wall_s)}: {scores}"
