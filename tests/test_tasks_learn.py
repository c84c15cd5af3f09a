"""Learnability: two fast tasks trained for real through attnlab.train.run, solved and aligned, with the
alignment, entropy, target and positional-QK logging read back from TensorBoard."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from attnlab import alignment, sweep, tags
from attnlab.train import build, run

CONF = Path(__file__).resolve().parents[1] / "conf"
QUIET = ["device=cpu", "logging.progress_bar=false", "logging.histograms=false", "data.val_size=200"]


def train(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*QUIET, *overrides])
    # The same model untrained, for comparison: its heads are not on the target.
    task, module, data = build(cfg)
    data.setup("fit")
    untrained = alignment.measure(module.model, task, data.validation[0]).best()
    with sweep.job_process(cfg):  # device.threads, as scripts/train.py runs it
        metrics = run(cfg, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == pytest.approx(metrics)
    return metrics, untrained


def test_reverse_solved_aligned_and_logged(tmp_path):
    metrics, untrained = train(tmp_path, "data=reverse", "data.seq_len=5", "data.vocab_size=5", "optim.lr=1e-2",
                               "trainer.max_steps=200", "trainer.val_every_n_steps=50", "trainer.stop_at=null",
                               "logging.images_every_n_steps=100")
    assert metrics["val/seq_acc"] >= 0.99
    assert metrics[tags.align(0, 0)] >= 0.9 and metrics[tags.ALIGN_BEST] == metrics[tags.align(0, 0)]
    assert untrained < 0.5  # it learned to attend as the target says
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0}).Reload()
    align = events.Scalars(tags.align(0, 0))
    assert len(align) >= 4 and align[-1].value == pytest.approx(metrics[tags.align(0, 0)])
    entropy = events.Scalars(tags.entropy(0, 0))
    assert entropy[-1].value < entropy[0].value  # and sharpened
    images = events.Tags()["images"]
    assert tags.target(0) in images and tags.attention(0, 0) in images
    assert len(events.Images(tags.qk_positional(0, 0))) >= 2


def test_mqar_solved_with_both_steps_of_the_circuit(tmp_path):
    metrics, untrained = train(tmp_path, "data=mqar", "model.layers=2", "model.dim=64", "optim.lr=3e-3",
                               "trainer.max_steps=200", "trainer.stop_at=null", "logging=off")
    assert metrics["val/seq_acc"] >= 0.99
    # Layer 0 carries each key into its value's position, layer 1 reads the value after the matching key.
    assert metrics[tags.align(0, 0)] >= 0.9 and metrics[tags.align(1, 0)] >= 0.9
    assert metrics[tags.ALIGN_BEST] == pytest.approx(min(metrics[tags.align(0, 0)], metrics[tags.align(1, 0)]))
    assert untrained < 0.5
