"""Variable-length examples on the model side: padding that nothing sees, in every attention path; rotary and ALiBi
positions; alignment and entropy that leave padded rows out; a validation set per length, solo and stacked."""

import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from attnlab import alignment, tags
from attnlab.attention import SelfAttention
from attnlab.model import AttentionModel
from attnlab.positions import SCHEMES, Rotary, alibi_slopes
from attnlab.stacked.model import StackedModel

PAD = 11  # the padding token of the models below (vocabulary 12)
ROOT = Path(__file__).resolve().parents[1]


def train_run(run_dir: Path, *overrides: str) -> dict:
    """A real run of the composed config, in this process, as tests/conftest.py's tiny_run; its metrics."""
    from attnlab.config import checked_arguments
    from attnlab.train import run

    overrides = checked_arguments(["device=cpu", "logging.progress_bar=false", *overrides])  # as scripts/train.py
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return run(cfg, run_dir)


def model(positions: str, causal: bool, layers: int = 2) -> AttentionModel:
    torch.manual_seed(0)
    return AttentionModel(12, 16, 32, 2, layers, positions, causal, mlp=True, norm=True, padding=PAD)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("positions", SCHEMES)
def test_padding_changes_nothing_a_real_token_computes(positions, causal):
    """An example of 9 tokens right-padded to 16 gives, at its 9 real positions, the logits and attention it gives
    alone (9 wide): in the explicit steps and in the fused kernel. No query puts weight on a padded key."""
    m = model(positions, causal).eval()
    alone = torch.randint(0, PAD, (3, 9), generator=torch.Generator().manual_seed(1))
    padded = torch.cat([alone, torch.full((3, 7), PAD)], dim=1)
    with torch.no_grad():
        want, want_weights = m(alone, need_weights=True)
        got, got_weights = m(padded, need_weights=True)
        fused, _ = m(padded)
    torch.testing.assert_close(got[:, :9], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused[:, :9], want, atol=1e-5, rtol=1e-5)
    for layer_want, layer_got in zip(want_weights, got_weights):  # [batch, head, query, key]
        assert layer_got[..., 9:].abs().max() == 0  # no weight on a padded key, from any query
        torch.testing.assert_close(layer_got[:, :, :9, :9], layer_want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", ["learned", "rope", "alibi"])
def test_stacked_members_mask_padding_as_their_solo_models(positions):
    solos = [model(positions, causal=False) for _ in range(3)]
    for k, solo in enumerate(solos):  # members that differ
        with torch.no_grad():
            solo.readout.weight.add_(k)
    stacked = StackedModel(solos)
    tokens = torch.randint(0, PAD, (3, 4, 16), generator=torch.Generator().manual_seed(2))
    tokens[:, :, 10:] = PAD
    with torch.no_grad():
        logits, weights = stacked(tokens, need_weights=True)
        fused, _ = stacked(tokens)
        for k, solo in enumerate(solos):
            want, want_weights = solo(tokens[k], need_weights=True)
            torch.testing.assert_close(logits[k], want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(fused[k], want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(weights[1][k], want_weights[1], atol=1e-5, rtol=1e-5)


def test_rotary_scores_depend_on_distance_only():
    """q·k after rotation is the same for (i, j) and (i + s, j + s): rope scores what is where relative to the query."""
    rotary = Rotary(d_head=8, length=64)
    q, k = torch.randn(8), torch.randn(8)
    at = torch.zeros(1, 64, 8)

    def score(i: int, j: int) -> float:
        qs, ks = at.clone(), at.clone()
        qs[0, i], ks[0, j] = q, k
        return (rotary(qs)[0, i] @ rotary(ks)[0, j]).item()

    assert score(3, 1) == pytest.approx(score(40, 38), abs=1e-4)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
    assert torch.allclose(rotary(at + 1)[0, 0], at[0, 0] + 1)  # position 0 is not turned


def test_alibi_penalises_distance_per_head_symmetrically():
    attention = SelfAttention(dim=8, heads=4, causal=False, positions="alibi", length=10)
    bias = attention.alibi(6)  # [head, query, key]
    slopes = alibi_slopes(4)
    assert slopes.tolist() == [2**-2, 2**-4, 2**-6, 2**-8]
    assert bias[1, 5, 2].item() == pytest.approx(-slopes[1].item() * 3)
    assert torch.equal(bias, bias.transpose(1, 2))  # bidirectional: |query - key|
    assert (bias.diagonal(dim1=1, dim2=2) == 0).all()


def test_entropy_and_alignment_leave_padded_rows_out():
    # Two examples, 4 positions; the second is padded after 2. Real rows are one-hot (entropy 0); the padded
    # rows are uniform (log 4) and must not count.
    weights = torch.zeros(2, 1, 4, 4)
    weights[..., 0] = 1
    weights[1, :, 2:] = 0.25
    keep = torch.tensor([[True] * 4, [True, True, False, False]])
    assert alignment.entropy(weights, keep).item() == pytest.approx(0.0)
    assert alignment.entropy(weights).item() == pytest.approx(2 * math.log(4) / 8)
    tally = alignment.Tally()
    target = torch.zeros(2, 4, 4)
    target[0, :, 0] = 1
    target[1, :2, 0] = 1  # no target row at the padded queries
    tally.add([weights], [target], keep)
    report = tally.report()
    assert report.align[0].item() == pytest.approx(1.0) and report.entropy[0].item() == pytest.approx(0.0)


def test_validation_per_length_logged_and_in_metrics(tmp_path):
    """A variable-length copy run evaluated at its own longest length and at twice it: val/len{N}/* and
    align/len{N}/* at every validation (event file) and in metrics.json; stop_at and val/* stay the training
    distribution's."""
    run_dir = tmp_path / "run"
    train_run(run_dir, "data=copy", "data.seq_len=6", "data.min_len=3", "data.val_lengths=[6,12]",
              "data.val_size=256", "model.layers=2", "trainer.max_steps=40", "trainer.val_every_n_steps=20", "logging=off")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for n in (6, 12):
        for name in tags.METRICS:
            assert 0 <= metrics[tags.metric(tags.length_stage(n), name)] <= (1 if name != "loss" else 100)
        assert tags.align(1, 0, n) in metrics and tags.align_best(n) in metrics
    assert metrics[tags.align_best(6)] != metrics[tags.align_best(12)]  # two sets, measured apart
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir)).Reload()
    scalars = events.Tags()["scalars"]
    assert {tags.metric(tags.length_stage(12), "acc"), tags.align_best(12), tags.metric("val", "seq_acc")} <= set(scalars)
    assert [e.step for e in events.Scalars(tags.align_best(12))][:2] == [19, 39]


def test_a_run_that_goes_on_from_its_checkpoint_draws_the_same_lengths(tmp_path):
    """ckpt_path (what resume= builds on) keeps the length stream: 10 steps, then 10 more from its checkpoint, end
    with the weights of 20 steps in one go, lengths of their own and all."""
    common = ["data=reverse", "data.min_len=2", "model.positions=alibi", "data.val_size=64", "logging=off",
              "trainer.val_every_n_steps=10"]
    whole = train_run(tmp_path / "whole", *common, "trainer.max_steps=20")
    train_run(tmp_path / "first", *common, "trainer.max_steps=10")
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    went_on = train_run(tmp_path / "second", *common, "trainer.max_steps=20", f"++ckpt_path={ckpt}")
    assert went_on == whole
    ours, theirs = (torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
                    for d in ("second", "whole"))
    for key, tensor in theirs.items():
        assert torch.equal(ours[key], tensor), key
