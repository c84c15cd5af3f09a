"""init_from=RUN_DIR|CKPT: a new run that starts from another run's weights, at step 0, with a fresh optimiser,
schedule and data stream; the task may differ where the shapes fit, else one line naming the tensor that does not."""

from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from conftest import TINY_RUN
from hydra import compose, initialize_config_dir
from test_sweep import hparams

from attnlab.train import run

ROOT = Path(__file__).resolve().parents[1]


class AtTrainStart(L.Callback):
    """What the model and optimiser hold as training starts."""

    def on_train_start(self, trainer, module):
        self.step = trainer.global_step
        self.weights = {name: tensor.clone() for name, tensor in module.state_dict().items()}
        self.optimiser_state = [len(optimiser.state) for optimiser in trainer.optimizers]


@pytest.fixture(scope="module")
def started(tiny_run, tmp_path_factory):
    """A copy run (same vocabulary and lengths as tiny_run's reverse) started from tiny_run's weights."""
    run_dir = tmp_path_factory.mktemp("init_from")
    seen = AtTrainStart()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*TINY_RUN, "data=copy", "data.seq_len=4", "trainer.max_steps=8",
                                                      "logging.images_every_n_steps=0", f"init_from={tiny_run}"])
    metrics = run(cfg, run_dir, [seen])
    return run_dir, seen, metrics


def test_starts_at_step_0_from_the_source_weights_with_a_fresh_optimiser(tiny_run, started):
    _, seen, metrics = started
    source = torch.load(tiny_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert source["global_step"] == 24 and seen.step == 0 and metrics["step"] == 8  # its own 8 steps, not 24 + 8
    assert seen.weights.keys() == source["state_dict"].keys()
    for name, tensor in source["state_dict"].items():
        assert torch.equal(seen.weights[name], tensor), name
    assert seen.optimiser_state == [0]  # AdamW's moments start empty: nothing of the source's optimiser


def test_recorded_in_the_runs_hparams(tiny_run, started):
    params, _ = hparams(started[0])
    assert params["init_from"] == str(tiny_run)


@pytest.mark.parametrize("given, said", [
    ("run", "init_from: {ckpt} holds model.blocks.0.attention.W_K of shape [16, 16], this config makes [32, 32]"),
    ("missing", "init_from: no checkpoint file at {missing}"),
    ("empty", "init_from: {empty} has no checkpoints/last.ckpt"),
])
def test_weights_that_do_not_fit_are_refused_in_one_line(tiny_run, tmp_path, script_runs, given, said):
    where = {"run": tiny_run, "missing": tmp_path / "nothing.ckpt", "empty": tmp_path}
    out = tmp_path / "out"
    (result,) = script_runs.run(Path("scripts/train.py"), [[*TINY_RUN, "model.dim=32", f"init_from={where[given]}",
                                                            f"hydra.run.dir={out}"]], ROOT)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    expected = said.format(ckpt=tiny_run / "checkpoints" / "last.ckpt", missing=where["missing"], empty=tmp_path)
    assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), result.stderr
    assert not out.exists()  # nothing left behind
