"""The RASP suite (attnlab/tasks/rasp/): each task's outputs and selectors against a plain-Python reference written
from RASP-exps's classifiers and pairwise selector functions, the per-head targets through alignment and
supervision, the config checks, and tiny runs that learn."""

from collections import Counter
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from attnlab import alignment, tags
from attnlab.config import ConfigError
from attnlab.tasks import make_task
from attnlab.train import build, run
from conftest import script_module

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
QUIET = ["device=cpu", "logging.progress_bar=false", "logging.images_every_n_steps=0", "data.val_size=200"]
VOCAB = {"rasp_dyck1": 3, "rasp_dyck2": 5}
NAMES = ["rasp_reverse", "rasp_hist", "rasp_hist_bos", "rasp_double_hist", "rasp_sort", "rasp_most_freq",
         "rasp_dyck1", "rasp_dyck2"]


def task(name, seq_len=8, min_len=1, vocab_size=None):
    return make_task(OmegaConf.create({"task": name, "seq_len": seq_len, "min_len": min_len,
                                       "vocab_size": vocab_size or VOCAB.get(name, 4)}))


def ptf(s, pairs):
    """RASP-exps's DyckiPTFClassifier: a stack; once broken, stay broken."""
    stack, out = [], []
    for c in s:
        if out and out[-1] == "F":
            out.append("F")
        elif c == "a":
            out.append("P" if stack else "T")
        elif c in "({":
            stack.append(c)
            out.append("P")
        elif stack and stack[-1] + c in pairs:
            stack.pop()
            out.append("P" if stack else "T")
        else:
            out.append("F")
    return out


def most_freq(s):
    counts = Counter(s)
    tokens = sorted(counts, key=lambda c: (-counts[c], s.index(c)))
    return tokens + ["§"] * (len(s) - len(tokens))


REFERENCE = {  # data tokens (names) -> output names, as RASP-exps's classifiers give them
    "rasp_reverse": lambda s: s[::-1],
    "rasp_hist": lambda s: [f"#{s.count(c)}" for c in s],
    "rasp_hist_bos": lambda s: [f"#{s.count(c)}" for c in s],
    "rasp_double_hist": lambda s: [f"#{Counter(Counter(s).values())[s.count(c)]}" for c in s],
    "rasp_sort": sorted,
    "rasp_most_freq": most_freq,
    "rasp_dyck1": lambda s: ptf(s, ["()"]),
    "rasp_dyck2": lambda s: ptf(s, ["()", "{}"]),
}


def examples(t, n=96, seed=0, length=None):
    """(data tokens as names, output names where scored) per example, and the batch."""
    batch = t.sample(n, torch.Generator().manual_seed(seed), length)
    names = t.token_names()
    out = []
    for inputs, targets, mask in zip(*(b.tolist() for b in batch)):
        data = [names[v] for v, m in zip(inputs, mask) if m]
        out.append((data, [names[v] for v, m in zip(targets, mask) if m]))
    return out, batch


@pytest.mark.parametrize("name", NAMES)
def test_outputs_are_the_reference(name):
    t = task(name)
    rows, (inputs, targets, mask) = examples(t)
    assert inputs.shape == targets.shape == mask.shape and inputs.shape[1] == t.positions(8)
    assert ((inputs >= 0) & (inputs < t.vocab)).all() and ((targets >= 0) & (targets < t.vocab)).all()
    lengths = sorted({len(data) for data, _ in rows})
    assert lengths[0] <= 2 and lengths[-1] == 8  # lengths uniform in 1 .. 8
    for data, answer in rows:
        assert answer == REFERENCE[name](data), data
    assert (inputs[~mask] == t.pad).sum() + t.bos * len(inputs) == (~mask).sum()  # unscored: the pads and BOS


@pytest.mark.parametrize("name", ["rasp_dyck1", "rasp_dyck2"])
def test_dyck_data_mixes_balanced_prefixes_and_random(name):
    rows, _ = examples(task(name, seq_len=12), n=300, seed=3)
    balanced = [answer[-1] == "T" for _, answer in rows[0::3]]
    assert sum(balanced) >= 0.9 * len(balanced)  # the first of every three is balanced (odd lengths: one neutral)
    finals = Counter(answer[-1] for _, answer in rows)
    assert all(finals[k] >= 20 for k in "PTF")  # and the rest gives pending and failed prefixes too


def selector(t, inputs, layer, head):
    """The task's head target as a 0/1 pattern over the data positions (BOS row and column cut off)."""
    pattern = t.layer_targets(inputs, layer)[:, head] > 0
    return pattern[:, 1:, 1:] if t.bos else pattern


PAIRWISE = {  # RASP-exps's selector functions (Minilangs.py), (name, layer, head): (q, k, s) -> bool
    ("rasp_sort", 0, 0): lambda q, k, s: s[k] < s[q] or (s[k] == s[q] and k < q),
    ("rasp_double_hist", 0, 0): lambda q, k, s: s[q] == s[k],
    ("rasp_double_hist", 0, 1): lambda q, k, s: s[q] == s[k] and k < q,
    ("rasp_double_hist", 1, 0): lambda q, k, s: s.count(s[k]) == s.count(s[q]) and s.index(s[k]) == k,
    ("rasp_most_freq", 0, 1): lambda q, k, s: s[q] == s[k] and k < q,
    ("rasp_hist", 0, 0): lambda q, k, s: s[q] == s[k] or k == 0,
    ("rasp_hist", 0, 1): lambda q, k, s: s[q] == s[k] and k == 0,
    ("rasp_reverse", 1, 0): lambda q, k, s: k == len(s) - 1 - q,
    ("rasp_dyck1", 1, 0): lambda q, k, s: k <= q,
}


@pytest.mark.parametrize("key", list(PAIRWISE), ids=lambda k: f"{k[0]}-L{k[1]}H{k[2]}")
def test_selectors_are_the_programs(key):
    name, layer, head = key
    t = task(name)
    rows, (inputs, _, _) = examples(t, n=24, seed=1)
    pattern = selector(t, inputs, layer, head)
    for b, (s, _) in enumerate(rows):
        n = len(s)
        want = [[PAIRWISE[key](q, k, s) for k in range(n)] for q in range(n)]
        assert pattern[b, :n, :n].tolist() == want
        assert not pattern[b, n:].any() and not pattern[b, :, n:].any()  # pads neither look nor are looked at


@pytest.mark.parametrize("name,layer", [("rasp_sort", 1), ("rasp_most_freq", 2)])
def test_the_last_selector_reads_each_output_from_its_source(name, layer):
    """The program's last head puts each output position on the key that holds its answer (most_freq: while
    there are distinct tokens left)."""
    t = task(name)
    rows, (inputs, targets, mask) = examples(t, n=32, seed=2)
    pattern = selector(t, inputs, layer, 0)
    for b, (s, answer) in enumerate(rows):
        for q, want in enumerate(answer):
            keys = pattern[b, q].nonzero().flatten().tolist()
            assert len(keys) == 1
            if want != "§":
                assert s[keys[0]] == want


def test_dyck2_opener_selector_finds_each_closers_opener():
    t = task("rasp_dyck2", seq_len=12)
    rows, (inputs, _, _) = examples(t, n=60, seed=4)
    pattern = selector(t, inputs, 1, 0)
    for b, (s, answer) in enumerate(rows[0::3]):  # balanced: every closer has its opener
        stack = []
        for q, c in enumerate(s):
            if c in "({":
                stack.append(q)
            elif c in ")}":
                assert pattern[3 * b, q].nonzero().flatten().tolist() == [stack.pop()]


def test_bos_rows_and_normalisation():
    t = task("rasp_double_hist")
    inputs = t.sample(16, torch.Generator().manual_seed(0))[0]
    target = t.layer_targets(inputs, 0)  # [batch, head, query, key]
    assert target.shape == (16, 2, inputs.shape[1], inputs.shape[1])
    assert (target[:, :, 0, 0] == 1).all()  # BOS looks at itself
    real = inputs != t.pad
    torch.testing.assert_close(target.sum(-1), real.unsqueeze(1).float().expand(16, 2, -1))
    assert (target[:, :, 1:, 0] > 0)[real[:, 1:].unsqueeze(1).expand(16, 2, -1)].all()  # every row: BOS too
    assert t.target_attention(inputs, 0) is None and t.layer_targets(inputs, 2) is None


def test_per_head_alignment_and_supervision():
    t = task("rasp_double_hist")
    inputs = t.sample(32, torch.Generator().manual_seed(0))[0]
    target = t.layer_targets(inputs, 0)
    uniform = (inputs != t.pad).float().view(32, 1, 1, -1).expand(-1, 2, inputs.shape[1], -1)
    uniform = uniform / uniform.sum(-1, keepdim=True)
    # Heads swapped: head 0 does selector 1 and head 1 selector 0.
    attention = torch.cat([target[:, 1:], target[:, :1], uniform[:, :1]], 1)  # [batch, 3 heads, query, key]
    matrix = alignment.alignment(attention, target)  # [selector, head]
    assert matrix.shape == (2, 3)
    assert matrix[0, 1] == pytest.approx(1, abs=1e-5) and matrix[1, 0] == pytest.approx(1, abs=1e-5)
    # Selector 1 (an earlier copy) lies inside selector 0 (a copy): selector 1's head scores 1 on selector 0 too,
    # selector 0's head not on selector 1; the diagonal (each head on its own) tells the two heads apart.
    assert matrix[0, 0] == pytest.approx(1, abs=1e-5) and matrix[1, 1] < 0.9 and (matrix[:, 2] < 0.9).all()
    report = alignment.Report([matrix], [torch.zeros(3)])
    scalars = report.scalars()
    assert scalars[tags.align_selector(0, 0)] == pytest.approx(1, abs=1e-5) == scalars[tags.align_selector(0, 1)]
    assert scalars[tags.align(0, 0)] == matrix[0, 0].item() and tags.align(0, 2) not in scalars
    assert scalars[tags.ALIGN_BEST] == pytest.approx(1, abs=1e-5)
    keep = inputs != t.pad
    for h in range(2):
        assert alignment.rasp_supervision_loss(target[:, h], target[:, h], keep) < 1e-12
        assert alignment.rasp_supervision_loss(uniform[:, h], target[:, h], keep) > 1e-3


def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[*QUIET, *overrides])


@pytest.mark.parametrize("overrides,message", [
    (["data=rasp_double_hist", "loss.attention=1", "model.heads=1"], r"^model.heads must be >= 2 for loss.attention"),
    (["data=rasp_hist", "loss=rasp", "model.heads=1"], r"^model.heads must be >= 2"),
    (["data=rasp_reverse", "loss.attention_form=mse"], r"^loss.attention_form must be one of rows, rasp"),
    (["data=rasp_dyck2", "data.vocab_size=4"], r"^data.vocab_size must be 5 for rasp_dyck2"),
    (["data=rasp_hist_bos", "data.seq_len=8", "data.min_len=9"], r"^data.min_len must be null"),
])
def test_bad_input(overrides, message):
    with pytest.raises(ConfigError, match=message):
        cfg = composed(*overrides)
        from attnlab.config import check

        check(cfg)
        build(cfg)


def test_supervised_run_learns_every_selector_head(tmp_path):
    """loss=rasp on double histogram at its compiled size: each of the three supervised heads takes its selector
    within a few hundred tiny steps, and the run logs them per head and per selector."""
    cfg = composed("data=rasp_double_hist", "data.seq_len=5", "data.vocab_size=3", "model.layers=2", "model.heads=2",
                   "model.dim=16", "loss=rasp", "optim.lr=1e-2", "trainer.max_steps=150", "trainer.stop_at=null",
                   "trainer.val_every_n_steps=150")
    metrics = run(cfg, tmp_path)
    for layer, head in [(0, 0), (0, 1), (1, 0)]:
        assert metrics[tags.align(layer, head)] >= 0.8, (layer, head, metrics)
    assert metrics[tags.ALIGN_BEST] == min(metrics[tags.align_selector(layer, s)] for layer, s in [(0, 0), (0, 1), (1, 0)])
    assert tags.align(1, 1) not in metrics  # layer 1 has one selector: its second head is free

    # scripts/ablate.py on it: every head tried on every selector of its layer, then each on its own selector's cells
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")  # as Hydra leaves it in a run directory
    ablate = script_module("ablate")
    step, results = ablate.ablate(tmp_path)
    assert step == 150 and results["learned"] == (pytest.approx(metrics["val/seq_acc"]), pytest.approx(metrics["val/acc"]))
    tried = {name.rsplit(" ", 1)[0] for name in results if " S" in name}
    assert tried == {f"L{layer}H{head} S{s}" for layer, selectors in [(0, 2), (1, 1)] for head in (0, 1)
                     for s in range(selectors)}
    assert {"L0 all support", "L1 all support"} <= set(results)
    # a head on a selector it was not pulled onto does worse than on its own (layer 0: same token vs earlier copy)
    assert results["L0H0 S0 target"][1] > results["L0H0 S1 target"][1], results


def test_reverse_learns_at_two_layers(tmp_path):
    """Reverse at lengths 1-4 with a layer that finds the length: learnt in a few hundred tiny steps."""
    cfg = composed("data=rasp_reverse", "data.seq_len=4", "data.vocab_size=3", "model.layers=2", "model.dim=32",
                   "model.mlp=true", "model.norm=true", "optim.lr=3e-3", "trainer.max_steps=300",
                   "trainer.stop_at=null", "trainer.val_every_n_steps=300")
    metrics = run(cfg, tmp_path)
    assert metrics["val/acc"] >= 0.9 and metrics["val/seq_acc"] >= 0.7, metrics  # chance: 1/3 per token


def test_an_example_by_name_reads_input_tokens():
    """Reverse's outputs are named as its inputs are: a user's "3 1 4" is the input tokens, answered reversed."""
    from attnlab.inspection import parse_example

    t = task("rasp_reverse", vocab_size=6)
    inputs, targets, mask = parse_example(t, "3 1 4")
    names = t.token_names()
    assert inputs.tolist() == [[3, 1, 4]] and [names[v] for v in targets[0]] == ["4", "1", "3"] and mask.all()
