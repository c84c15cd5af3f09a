"""attnlab.load_run's run object on a real (tiny) run kept with checkpoint=every: its hooks and cache by
TransformerLens's names, ablation and patching, the kept steps, the head detectors it logged, load_sweep, and its
refusals of bad input."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import attnlab
from attnlab import checkpoints, heads
from attnlab.config import ConfigError
from attnlab.hooks import HookPoint
from conftest import trained_in

ROOT = Path(__file__).resolve().parents[1]

# 2 layers x 2 heads with an MLP and LayerNorm (every hook point), weights kept every 8 steps.
RUN = [
    "device=cpu", "data=reverse", "data.seq_len=4", "data.batch_size=32", "data.val_size=64",
    "model.dim=16", "model.heads=2", "model.layers=2", "model.mlp=true", "model.norm=true",
    "trainer.max_steps=24", "trainer.val_every_n_steps=8", "trainer.stop_at=null",
    "logging.every_n_steps=4", "logging.images_every_n_steps=0", "logging.progress_bar=false",
    "checkpoint=every", "checkpoint.every_n_steps=8",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return trained_in(tmp_path_factory.mktemp("kept_run"), RUN)


@pytest.fixture(scope="module")
def run(run_dir):
    return attnlab.load_run(run_dir)


HOOKS_PER_LAYER = ("hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores",
                   "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")


def test_run_object(run):
    assert run.step == 24 and run.steps == [0, 8, 16, 24]  # step 0: the weights as initialised
    assert not run.model.training and next(run.model.parameters()).device.type == "cpu"
    assert run.cfg.model.heads == 2
    ids = run.task.encode("3 1 4 1")
    assert ids.tolist() == [3, 1, 4, 1] and run.task.decode(ids) == "3 1 4 1"
    assert run.validation[0].shape == (64, 7)


def test_cache_has_transformer_lens_names_and_shapes(run):
    tokens = run.validation[0][:5]  # [batch 5, pos 7]
    logits, cache = run.run_with_cache(tokens)
    expected = {"hook_embed", "hook_pos_embed"} | {f"blocks.{l}.{h}" for l in range(2) for h in HOOKS_PER_LAYER}
    assert set(cache) == expected == set(run.hook_names)
    assert cache["hook_embed"].shape == (5, 7, 16) and cache["hook_pos_embed"].shape == (7, 16)
    for name in ("attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z"):
        assert cache[f"blocks.1.{name}"].shape == (5, 7, 2, 8)  # [batch, pos, head, d_head] as in TransformerLens
    assert cache["pattern", 1].shape == (5, 2, 7, 7)
    reference, attention = run.model(tokens, need_weights=True)
    torch.testing.assert_close(logits, reference, rtol=0, atol=0)
    for layer in range(2):
        torch.testing.assert_close(cache["pattern", layer], attention[layer], rtol=0, atol=0)
        # z in TransformerLens's layout, heads concatenated and mixed by W_O, is the attention output
        z = cache[f"blocks.{layer}.attn.hook_z"]
        W_O = run.model.blocks[layer].attention.W_O
        torch.testing.assert_close(z.reshape(5, 7, 16) @ W_O, cache[f"blocks.{layer}.hook_attn_out"])
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_mid"] + cache[f"blocks.{layer}.hook_mlp_out"],
                                   cache[f"blocks.{layer}.hook_resid_post"])
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], cache["hook_embed"] + cache["hook_pos_embed"])
    torch.testing.assert_close(run.model.readout(run.model.norm(cache["blocks.1.hook_resid_post"])), logits)


def test_ablating_and_patching(run):
    tokens = run.validation[0][:8]
    clean = run.run_with_hooks(tokens)

    def zero_head(z, hook):  # [batch, pos, head, d_head]
        z[:, :, 1] = 0
        return z

    ablated = run.run_with_hooks(tokens, [("blocks.0.attn.hook_z", zero_head)])
    # the same by hand: head 1's weights on its values zeroed is head 1's columns of W_V zeroed
    model = run.at(None).model
    model.blocks[0].attention.W_V.data[:, 8:] = 0
    by_hand, _ = model(tokens, need_weights=True)
    torch.testing.assert_close(ablated, by_hand)
    assert (ablated - clean).abs().max() > 1e-3

    # patching: every pattern replaced by uniform attention over all keys
    uniform = lambda pattern, hook: torch.full_like(pattern, 1 / pattern.shape[-1])  # noqa: E731
    _, cache = run.run_with_cache(tokens)
    patched_logits = run.run_with_hooks(tokens, [(("pattern", 0), uniform), (("pattern", 1), uniform)])
    assert (patched_logits - clean).abs().max() > 1e-3
    # hooks are gone afterwards: the model computes what it did before
    torch.testing.assert_close(run.run_with_hooks(tokens), clean, rtol=0, atol=0)
    assert all(not point.hooks for point in run.model.modules() if isinstance(point, HookPoint))


def test_unhooked_points_are_identities():
    """What keeps training as fast as without them: an unhooked point hands back its input, nothing else."""
    point, x = HookPoint(swap=(1, 2)), torch.randn(2, 3, 4, 5)
    assert point(x) is x
    seen = []
    point.hooks.append(lambda t, hook: seen.append(t.shape))
    assert point(x) is not None and seen == [(2, 4, 3, 5)]  # hooks see TransformerLens's layout


def test_kept_steps(run, run_dir):
    last = run.model.state_dict()
    at_24 = attnlab.load_run(run_dir, step=24)
    assert at_24.step == 24
    for name, tensor in at_24.model.state_dict().items():
        torch.testing.assert_close(tensor, last[name], rtol=0, atol=0)
    at_0 = run.at(0)
    assert at_0.step == 0
    assert (at_0.model.blocks[0].attention.W_Q - run.model.blocks[0].attention.W_Q).abs().max() > 1e-3
    # step files hold the model's weights only: no optimiser state to pay disk for
    step_file = torch.load(run_dir / checkpoints.step_file(8), weights_only=True)
    assert "optimizer_states" not in step_file and step_file["global_step"] == 8


def test_log_schedule_is_pythias():
    kept = [s for s in range(3001) if checkpoints.keeps("log", None, s)]
    assert kept == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 3000]
    assert [s for s in range(31) if checkpoints.keeps("every", 10, s)] == [0, 10, 20, 30]
    assert not any(checkpoints.keeps("last", None, s) for s in range(100))


def test_logged_head_scores_are_the_detectors_on_the_validation_set(run, run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    tokens = run.validation[0]
    _, cache = run.run_with_cache(tokens, names=[("pattern", 0), ("pattern", 1)])
    for layer in range(2):
        scores = heads.scores(cache["pattern", layer], tokens, run.model.blocks[layer].attention.causal)
        for kind in heads.KINDS:
            for head in range(2):
                assert metrics[f"heads/layer{layer}/head{head}/{kind}"] == pytest.approx(scores[kind][head].item(), abs=1e-5)


def test_detectors_on_known_patterns():
    tokens = torch.tensor([[5, 1, 2, 1, 2, 3]])  # [batch, pos]: 1 2 repeats
    n = tokens.shape[1]
    previous = torch.zeros(1, 1, n, n)
    previous[0, 0, 0, 0] = 1
    previous[0, 0, torch.arange(1, n), torch.arange(n - 1)] = 1  # each query on the token before it
    s = heads.scores(previous, tokens, causal=True)
    assert s["previous"].item() == 1.0  # row 0 has no previous token: left out, not a miss
    assert s["self"].item() == pytest.approx(1 / 6)  # row 0 only
    # induction: query 3 (token 1) -> key 2 (after the earlier 1); query 4 (token 2) -> key 3 (after the earlier 2)
    induction = torch.zeros(1, 1, n, n)
    induction[0, 0, :, 0] = 1
    induction[0, 0, 3] = 0
    induction[0, 0, 3, 2] = 1
    induction[0, 0, 4] = 0
    induction[0, 0, 4, 3] = 1
    s = heads.scores(induction, tokens, causal=True)
    assert s["induction"].item() == 1.0 and s["duplicate"].item() == 0.0
    # bidirectional: the first 1 (query 1) has its duplicate ahead, at key 3, and that row now counts
    ahead = torch.zeros(1, 1, n, n)
    ahead[0, 0, :, 0] = 1
    ahead[0, 0, 1] = 0
    ahead[0, 0, 1, 3] = 1
    assert heads.scores(ahead, tokens, causal=False)["duplicate"].item() == pytest.approx(1 / 4)  # rows 1-4
    assert heads.scores(ahead, tokens, causal=True)["duplicate"].item() == 0.0  # rows 3, 4 only
    assert heads.best({"previous": 0.2, "first": 0.9, "induction": float("nan")}) == ("first", 0.9)


def test_load_sweep(run_dir, tmp_path):
    sweep = tmp_path / "sweep"
    for heads_value in (1, 2):
        job = sweep / f"model.heads={heads_value}"
        shutil.copytree(run_dir, job, ignore=shutil.ignore_patterns("checkpoints", "events.*"))
        (job / ".hydra" / "overrides.yaml").write_text(f"- model.heads={heads_value}\n- seed=0\n")
        (job / "job.json").write_text(json.dumps({"status": "ok", "job": heads_value - 1}))
    rows = attnlab.load_sweep(sweep)
    assert [row["model.heads"] for row in rows] == [1, 2]
    assert "seed" not in rows[0]  # the same in every job: not a column
    assert rows[0]["val/loss"] == json.loads((run_dir / "metrics.json").read_text())["val/loss"]
    assert rows[1]["run_dir"] == sweep / "model.heads=2"
    pandas = pytest.importorskip("pandas")
    assert isinstance(rows.frame(), pandas.DataFrame) and len(rows.frame()) == 2


def test_bad_input(run, run_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"kept no checkpoint of step 5 \(kept steps: 0, 8, 16, 24"):
        attnlab.load_run(run_dir, step=5)
    with pytest.raises(ConfigError, match="is not a run directory"):
        attnlab.load_run(tmp_path)
    with pytest.raises(ConfigError, match="holds no jobs of a sweep"):
        attnlab.load_sweep(tmp_path)
    with pytest.raises(ConfigError, match=r"10 is outside the vocabulary of task reverse \(ids 0-9\)"):
        run.run_with_cache([1, 2, 10])
    with pytest.raises(ConfigError, match="'x' is not a token of task reverse"):
        run.run_with_cache("1 2 x")
    with pytest.raises(ConfigError, match=r"8 positions, the model has 7"):
        run.run_with_cache(list(range(8)))
    with pytest.raises(ConfigError, match=r"not a hook point of this model \(nearest: blocks.0.attn.hook_pattern\)"):
        run.run_with_hooks([1, 2], [("blocks.0.attn.hook_patern", lambda t, hook: None)])
    _, cache = run.run_with_cache([1, 2])
    with pytest.raises(ConfigError, match=r"nearest: blocks.1.hook_resid_post"):
        cache["blocks.1.hook_resid_pots"]
    assert ("pattern", 1) in cache and "blocks.2.attn.hook_pattern" not in cache


def test_inspect_run_step(run_dir, capsys):
    import runpy

    main = runpy.run_path(str(ROOT / "scripts" / "inspect_run.py"))["main"]
    assert main([str(run_dir), "--step", "8", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "step 8" in out and (run_dir / "inspect" / "step=8" / "attention-probe.png").is_file()
    assert main([str(run_dir), "--step", "9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kept no checkpoint of step 9 (kept steps: 0, 8, 16, 24" in err


def test_resumed_run_keeps_its_schedule(tmp_path):
    """Going on from last.ckpt in the same directory keeps the steps the schedule still holds ahead, without a second
    step 0, and leaves the steps already kept as they were."""
    from attnlab.train import run as train

    overrides = [o for o in RUN if not o.startswith("trainer.max_steps")]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        first = compose(config_name="train", overrides=overrides + ["trainer.max_steps=16"])
        then = compose(config_name="train", overrides=overrides + ["trainer.max_steps=24",
                                                                   f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"])
    train(first, tmp_path)
    kept_16 = (tmp_path / checkpoints.step_file(16)).read_bytes()
    step_0_written = (tmp_path / checkpoints.step_file(0)).stat().st_mtime_ns
    train(then, tmp_path)
    assert checkpoints.kept_steps(tmp_path) == [0, 8, 16, 24]
    assert (tmp_path / checkpoints.step_file(16)).read_bytes() == kept_16
    assert (tmp_path / checkpoints.step_file(0)).stat().st_mtime_ns == step_0_written
    assert torch.load(tmp_path / checkpoints.step_file(24), weights_only=True)["global_step"] == 24
