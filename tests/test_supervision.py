"""Attention supervision (loss.attention): the loss itself, off by default at no cost, logged and learned from when
on, and refused where there is nothing to supervise; scripts/ablate.py on the supervised run."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from attnlab import sweep, tags
from attnlab.alignment import supervision_loss
from attnlab.attention import SelfAttention
from attnlab.config import ConfigError
from attnlab.tasks.histogram import Histogram
from attnlab.train import build, run
from conftest import script_module

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
QUIET = ["device=cpu", "logging.progress_bar=false", "logging.images_every_n_steps=0", "data.val_size=200"]


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[*QUIET, *overrides])


def histogram_target() -> torch.Tensor:
    """A target whose rows spread over several keys and whose BOS row has none: [batch, query, key]."""
    task = Histogram(seq_len=6, vocab_size=3)
    return task.target_attention(task.sample(16, torch.Generator().manual_seed(0))[0], 0)


def test_zero_on_the_target_and_positive_elsewhere():
    target = histogram_target()
    assert supervision_loss(target, target) == 0
    uniform = torch.full_like(target, 1 / target.shape[-1])
    assert supervision_loss(uniform, target) > 0
    # A target given unnormalised (say a 0/1 pattern) means the same rows normalised.
    assert supervision_loss(target, 3 * (target > 0).float()) == 0


def test_rows_without_a_target_are_free():
    target = histogram_target()
    attention = target.clone()
    attention[:, 0] = torch.softmax(torch.randn(attention.shape[0], attention.shape[-1]), -1)  # BOS: no target
    assert supervision_loss(attention, target) == 0
    attention[:, 1] = attention[:, 0]  # a row with a target, moved off it
    assert supervision_loss(attention, target) > 0


def test_supervised_run_logs_its_loss_and_learns_the_target(tmp_path):
    cfg = composed("data.seq_len=5", "data.vocab_size=5", "loss.attention=10", "optim.lr=1e-2", "trainer.max_steps=120",
                   "trainer.stop_at=null", "logging.every_n_steps=20", "trainer.val_every_n_steps=60")
    with sweep.job_process(cfg):
        metrics = run(cfg, tmp_path)
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0}).Reload()
    logged = events.Scalars(tags.ATTENTION_LOSS)
    assert [e.step for e in logged] == list(range(19, 120, 20))
    assert logged[-1].value < logged[0].value / 2
    assert metrics[tags.ALIGN_BEST] >= 0.9
    # scripts/ablate.py on it: the head replaced by its target keeps the task solved, spread evenly it does not.
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")  # as Hydra leaves it in a run directory
    step, results = script_module("ablate").ablate(tmp_path)
    assert step == 120 and results["learned"][0] == pytest.approx(metrics["val/seq_acc"])
    assert results["L0H0 target"][0] >= 0.99 and results["L0H0 uniform"][0] < 0.5
    assert results["L0H0 support"][0] >= 0.99  # its own weights on the target's cells: as good as the target
    # --by-token: every query token of the target's rows, each near its target and solved with it there
    _, split = script_module("ablate").ablate(tmp_path, by_token=True)
    tokens = {name: values for name, values in split.items() if name.startswith("L0H0 token ")}
    assert len(tokens) == 5 and all(align >= 0.8 and on_target >= 0.99 for align, on_target, _ in tokens.values())


def test_off_by_default_at_no_cost(tmp_path, monkeypatch):
    cfg = composed("data.seq_len=5", "data.vocab_size=5", "trainer.max_steps=20", "logging.every_n_steps=10",
                   "trainer.val_every_n_steps=20")
    assert cfg.loss.attention == 0
    # need_weights as each training forward asked it (validation's alignment forward runs in eval mode).
    asked, forward = [], SelfAttention.forward
    monkeypatch.setattr(SelfAttention, "forward", lambda self, x, need_weights=True, keep=None: (
        asked.append(need_weights) if self.training else None) or forward(self, x, need_weights, keep))
    with sweep.job_process(cfg):
        run(cfg, tmp_path)
    assert len(asked) == 20 and not any(asked)  # the fused kernel throughout: no weights materialised
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0}).Reload()
    assert tags.metric("train", "loss") in events.Tags()["scalars"]
    assert tags.ATTENTION_LOSS not in events.Tags()["scalars"]


@pytest.mark.parametrize("overrides,message", [
    (["loss.attention=-1"], "loss.attention must be a number >= 0, got -1"),
    (["loss.attention=abc"], "loss.attention must be a number >= 0, got 'abc'"),
    (["data=modular_addition", "loss.attention=1"], "loss.attention must be 0 for modular_addition"),
])
def test_bad_weights_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build(composed(*overrides))
