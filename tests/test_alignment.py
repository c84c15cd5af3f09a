"""The alignment score and entropy (attnlab.alignment): 1 for the target itself, the uniform baseline for uniform
attention, entropy of uniform rows = log(keys); and `measure` over a model's real attention."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from attnlab import alignment, heads, tags
from attnlab.model import AttentionModel
from attnlab.tasks import make_task

TASKS = {
    "reverse": dict(seq_len=5, vocab_size=4),
    "histogram": dict(seq_len=7, vocab_size=3),  # several target cells per row
    "majority": dict(seq_len=6, vocab_size=3),
    "mqar": dict(num_kv_pairs=3, seq_len=15, vocab_size=10),
    "induction": dict(seq_len=6, vocab_size=8),
    "selective_copy": dict(seq_len=9, vocab_size=5, num_tokens=3),
}


def task(name):
    return make_task(OmegaConf.create({"task": name, **TASKS[name], "batch_size": 4, "val_size": 8}))


def uniform_attention(batch: int, length: int, causal: bool) -> torch.Tensor:
    allowed = torch.ones(length, length).tril() if causal else torch.ones(length, length)
    return (allowed / allowed.sum(-1, keepdim=True)).expand(batch, 1, length, length)  # [batch, head, q, k]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_target_scores_one_and_uniform_scores_the_baseline(name):
    t = task(name)
    inputs, _, _ = t.sample(20, torch.Generator().manual_seed(0))
    layer = 1 if name == "selective_copy" else 0
    target = t.target_attention(inputs, layer)  # [batch, query, key]
    uniform = uniform_attention(20, t.length, t.causal)
    # Two heads: one attends exactly as the target, one uniformly over the keys it may see.
    attention = torch.cat([target.unsqueeze(1), uniform], dim=1)
    score = alignment.alignment(attention, target)
    assert score[0].item() == pytest.approx(1.0)
    # The uniform baseline, counted cell by cell: per target row, target cells / keys the row may attend to.
    shares = []
    for b in range(20):
        for q in range(t.length):
            cells = [k for k in range(t.length) if target[b, q, k] > 0]
            if cells:
                shares.append(len(cells) / ((q + 1) if t.causal else t.length))
    assert score[1].item() == pytest.approx(sum(shares) / len(shares))
    assert score[1].item() < 0.9  # a task whose uniform attention looked aligned would tell nothing


def test_rows_without_target_do_not_count():
    target = torch.zeros(1, 3, 3)
    target[0, 2, 0] = 1.0  # only the last query has a target
    attention = torch.zeros(1, 1, 3, 3)
    attention[0, 0, :, 1] = 1.0  # everything on key 1 ...
    attention[0, 0, 2] = torch.tensor([0.25, 0.75, 0.0])  # ... except the target row, a quarter on key 0
    assert alignment.alignment(attention, target).item() == pytest.approx(0.25)


def test_entropy():
    uniform = uniform_attention(2, 4, causal=False)
    assert alignment.entropy(uniform).item() == pytest.approx(math.log(4))
    sharp = torch.eye(4).expand(2, 1, 4, 4)
    assert alignment.entropy(sharp).item() == pytest.approx(0.0)
    causal = uniform_attention(1, 4, causal=True)  # rows see 1, 2, 3, 4 keys
    assert alignment.entropy(causal).item() == pytest.approx(sum(math.log(k) for k in range(1, 5)) / 4)


def test_measure_over_a_model_in_chunks():
    t = task("induction")
    model = AttentionModel(t.vocab, t.length, dim=16, heads=2, layers=3, positions="learned", causal=True, mlp=False,
                           norm=False)
    inputs, _, _ = t.sample(alignment.CHUNK + 50, torch.Generator().manual_seed(0))  # two chunks, unequal
    report = alignment.measure(model, t, inputs)
    _, attention = model(inputs, need_weights=True)
    for layer in range(3):
        expected = None if layer == 2 else alignment.alignment(attention[layer], t.target_attention(inputs, layer))
        if expected is None:
            assert report.align[layer] is None
        else:
            torch.testing.assert_close(report.align[layer], expected.detach())
        torch.testing.assert_close(report.entropy[layer], alignment.entropy(attention[layer]).detach())
    scalars = report.scalars()
    assert set(scalars) == (
        {tags.align(layer, head) for layer in (0, 1) for head in (0, 1)}
        | {tags.entropy(layer, head) for layer in range(3) for head in (0, 1)}
        | {tags.ALIGN_BEST}
        | {tags.head_kind(layer, head, kind) for layer in range(3) for head in (0, 1) for kind in heads.KINDS}
    )
    for layer in range(3):  # the head detectors summed over the chunks are the detectors on the whole set
        whole = heads.scores(attention[layer].detach(), inputs, causal=True)
        for kind in heads.KINDS:
            torch.testing.assert_close(report.kinds[layer][kind], whole[kind])
    # align/best: the best head of each layer with a target, then the weaker of the two layers.
    assert scalars[tags.ALIGN_BEST] == pytest.approx(min(report.align[0].max().item(), report.align[1].max().item()))
    assert all(0 <= scalars[tags.align(layer, head)] <= 1 for layer in (0, 1) for head in (0, 1))


def test_no_target_no_alignment():
    t = make_task(OmegaConf.create({"task": "modular_addition", "p": 5, "train_fraction": 0.5, "split_seed": 0,
                                    "batch_size": 4, "val_size": 8}))
    model = AttentionModel(t.vocab, t.length, dim=8, heads=2, layers=1, positions="learned", causal=True, mlp=True,
                           norm=False)
    report = alignment.measure(model, t, t.validation_set(100, torch.Generator())[0])
    assert report.align == [None] and report.best() is None
    # no align/*: only entropy and the head detectors, which need no target
    assert {t for t in report.scalars() if not t.startswith("heads/")} == {tags.entropy(0, 0), tags.entropy(0, 1)}
