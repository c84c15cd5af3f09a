"""run.to_transformer_lens() against TransformerLens itself, on trained runs: its logits are attnlab's to 1e-5, its
cached patterns are attnlab's attention, and its own head detector agrees with attnlab's head scores. Needs the `tl`
extra, which the `test` extra installs (CI runs this file)."""

import copy
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import attnlab
from attnlab import heads
from attnlab.config import ConfigError

head_detector = pytest.importorskip("transformer_lens.head_detector")

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["device=cpu", "data.batch_size=32", "data.val_size=32", "trainer.val_every_n_steps=20",
          "trainer.stop_at=null", "logging.every_n_steps=10", "logging.images_every_n_steps=0",
          "logging.progress_bar=false"]
RUNS = {
    # the article's model: one attention-only layer, learned positions, causal
    "one_layer": ["data=reverse", "data.seq_len=4", "model.dim=16", "trainer.max_steps=20"],
    # two layers with MLP and LayerNorm on induction, no positions (a fixed W_pos of zeros)
    "induction_mlp_norm": ["data=induction", "data.seq_len=6", "data.vocab_size=8", "model.layers=2", "model.dim=16",
                           "model.heads=2", "model.mlp=true", "model.norm=true", "model.positions=none",
                           "trainer.max_steps=20"],
    # bidirectional, sinusoidal positions (a fixed W_pos), two heads
    "bidirectional": ["data=reverse", "data.seq_len=4", "model.dim=16", "model.heads=2", "model.causal=false",
                      "model.positions=sinusoidal", "trainer.max_steps=20"],
    # variable length (lengths 1-6, padded on the right), bidirectional, MLP and LayerNorm: a RASP task's model
    "variable_length": ["data=rasp_reverse", "data.seq_len=6", "data.vocab_size=6", "model.dim=16", "model.heads=2",
                        "model.layers=2", "model.causal=false", "model.mlp=true", "model.norm=true",
                        "trainer.max_steps=20"],
}


@pytest.fixture(scope="module", params=list(RUNS))
def run(request, tmp_path_factory):
    from attnlab.train import run as train

    run_dir = tmp_path_factory.mktemp(request.param)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=COMMON + RUNS[request.param])
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    train(cfg, run_dir)
    return attnlab.load_run(run_dir)


def test_logits_and_patterns_are_attnlabs(run):
    tl_model = run.to_transformer_lens()
    assert tl_model.cfg.attention_dir == ("causal" if run.model.blocks[0].attention.causal else "bidirectional")
    tokens = run.validation[0]  # [32, pos]
    ours, cache = run.run_with_cache(tokens)
    with torch.no_grad():
        theirs, tl_cache = tl_model.run_with_cache(tokens)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    for layer in range(len(run.model.blocks)):
        torch.testing.assert_close(tl_cache["pattern", layer], cache["pattern", layer], rtol=0, atol=1e-6)
        for name in ("attn.hook_q", "attn.hook_z", "hook_attn_out", "hook_resid_post"):  # the same names and layouts
            torch.testing.assert_close(tl_cache[f"blocks.{layer}.{name}"], cache[f"blocks.{layer}.{name}"],
                                       rtol=0, atol=1e-5)


def test_its_head_detector_agrees(run):
    """TransformerLens's detection patterns (causal, one sequence at a time) scored with its own "mul" score, which
    averages over every query row, against attnlab's, which leaves out the rows without a pattern cell: per
    sequence, TransformerLens's score times the rows is attnlab's times the rows that have a cell."""
    tl_model = run.to_transformer_lens()
    functions = {
        "previous": head_detector.get_previous_token_head_detection_pattern,
        "duplicate": head_detector.get_duplicate_token_head_detection_pattern,
        "induction": head_detector.get_induction_head_detection_pattern,
    }
    compared = 0
    for tokens in run.validation[0][:6]:  # [pos]
        with torch.no_grad():
            _, tl_cache = tl_model.run_with_cache(tokens.unsqueeze(0))
        patterns = heads.patterns(tokens.unsqueeze(0), causal=True)
        for layer in range(len(run.model.blocks)):
            ours = heads.scores(tl_cache["pattern", layer], tokens.unsqueeze(0), causal=True)
            for kind, function in functions.items():
                detection = function(tokens.unsqueeze(0))
                assert torch.equal(detection, patterns[kind][0])  # the same cells
                rows = int((patterns[kind][0].sum(-1) > 0).sum())
                for head in range(run.model.blocks[0].attention.heads):
                    theirs = head_detector.compute_head_attention_similarity_score(
                        tl_cache["pattern", layer][0, head], detection, exclude_bos=False,
                        exclude_current_token=False, error_measure="mul",
                    )
                    if rows:
                        assert theirs * len(tokens) == pytest.approx(ours[kind][head].item() * rows, abs=1e-5)
                        compared += 1
                    else:
                        assert theirs == 0.0
    assert compared > 0


def test_refused(run):
    other = copy.copy(run)
    other.cfg = copy.deepcopy(run.cfg)
    other.cfg.model.positions = "alibi"
    with pytest.raises(ConfigError, match=r"model.positions=alibi: run.to_transformer_lens\(\) takes learned, sinusoidal or none"):
        other.to_transformer_lens()


@pytest.mark.parametrize("run", ["variable_length"], indirect=True)
def test_padding_is_masked_without_being_asked(run):
    """A variable-length run's padded keys are masked in every TransformerLens call, as attnlab masks them: called
    plainly, with run_with_hooks, or with the caller's own attention_mask. Its unwrapped forward (no mask) would
    attend to the padding and differ."""
    tl_model = run.to_transformer_lens()
    tokens = run.validation[0]  # [32, pos]
    assert (tokens == run.model.padding).any()  # some examples are shorter than the longest
    ours, _ = run.run_with_cache(tokens)
    with torch.no_grad():
        torch.testing.assert_close(tl_model(tokens), ours, rtol=0, atol=1e-5)
        torch.testing.assert_close(tl_model.run_with_hooks(tokens, fwd_hooks=[]), ours, rtol=0, atol=1e-5)
        mask = (tokens != run.model.padding).long()
        torch.testing.assert_close(tl_model(tokens, attention_mask=mask), ours, rtol=0, atol=1e-5)
        unmasked = type(tl_model).forward(tl_model, tokens, attention_mask=torch.ones_like(tokens))
    assert (unmasked - ours).abs().max() > 1e-2
