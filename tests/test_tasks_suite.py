"""The task suite (histogram, majority, MQAR, induction, selective copy, modular addition): every generator's
targets against a plain-Python per-example reference, seeded determinism, constraint errors, and well-formed
target attention patterns for every task that has one."""

from collections import Counter

import pytest
import torch
from omegaconf import OmegaConf

from attnlab.config import ConfigError
from attnlab.tasks import TASKS, make_task

SIZES = {  # small sizes with everything in play (pads, noise, ties to reject, several queries)
    "copy": dict(seq_len=5, vocab_size=4),
    "reverse": dict(seq_len=5, vocab_size=4),
    "sort": dict(seq_len=5, vocab_size=4),
    "histogram": dict(seq_len=7, vocab_size=3),
    "majority": dict(seq_len=6, vocab_size=3),
    "mqar": dict(num_kv_pairs=3, seq_len=15, vocab_size=10),
    "induction": dict(seq_len=6, vocab_size=8),
    "selective_copy": dict(seq_len=9, vocab_size=5, num_tokens=3),
    "modular_addition": dict(p=7, train_fraction=0.4, split_seed=0),
    # The RASP suite (tests/test_rasp.py checks each against its reference), lengths 1-6 with pads.
    **{name: dict(seq_len=6, min_len=1, vocab_size=4) for name in
       ("rasp_reverse", "rasp_hist", "rasp_hist_bos", "rasp_double_hist", "rasp_sort", "rasp_most_freq")},
    "rasp_dyck1": dict(seq_len=6, min_len=1, vocab_size=3),
    "rasp_dyck2": dict(seq_len=6, min_len=1, vocab_size=5),
}
NEW = ["histogram", "majority", "mqar", "induction", "selective_copy", "modular_addition"]


def task(name, **overrides):
    return make_task(OmegaConf.create({"task": name, **SIZES[name], **overrides, "batch_size": 4, "val_size": 8}))


def batch(name, n=48, seed=1):
    t = task(name)
    inputs, targets, mask = t.sample(n, torch.Generator().manual_seed(seed))
    assert inputs.shape == targets.shape == mask.shape == (n, t.length)
    assert inputs.dtype == targets.dtype == torch.long and mask.dtype == torch.bool
    assert 0 <= inputs.min() and inputs.max() < t.vocab and 0 <= targets.min() and targets.max() < t.vocab
    assert len(t.token_names()) == t.vocab
    return t, inputs.tolist(), targets.tolist(), mask.tolist()


def scored(targets, mask):
    return [t for t, m in zip(targets, mask) if m]


def test_every_task_is_registered():
    assert set(SIZES) == set(TASKS)


def test_histogram_counts_each_token():
    t, inputs, targets, mask = batch("histogram")
    names = t.token_names()
    for x_in, y, m in zip(inputs, targets, mask):
        assert names[x_in[0]] == "BOS" and not m[0] and all(m[1:])
        x = x_in[1:]
        assert [names[c] for c in scored(y, m)] == [f"#{x.count(v)}" for v in x]


def test_majority_is_the_unique_most_frequent_token():
    t, inputs, targets, mask = batch("majority", n=200)
    for x_in, y, m in zip(inputs, targets, mask):
        x, equals = x_in[:-1], x_in[-1]
        assert t.token_names()[equals] == "=" and m == [False] * len(x) + [True]
        (top, count), *rest = Counter(x).most_common()
        assert not rest or rest[0][1] < count  # unique: tied examples were redrawn
        assert y[-1] == top


def test_mqar_answers_each_query_with_its_value():
    t, inputs, targets, mask = batch("mqar")
    pairs, keys, pad = t.num_kv_pairs, t.vocab_size // 2, t.vocab_size
    for x_in, y, m in zip(inputs, targets, mask):
        stream = x_in + [y[-1]]
        context = dict(zip(stream[0 : 2 * pairs : 2], stream[1 : 2 * pairs : 2]))
        assert len(context) == pairs and all(k < keys for k in context)  # distinct keys from the first half
        assert all(keys <= v < t.vocab_size for v in context.values())  # values from the second half
        queries = [p for p in range(t.length) if m[p]]
        assert sorted(x_in[p] for p in queries) == sorted(context)  # every key asked once
        assert all(p >= 2 * pairs and (p - 2 * pairs) % 2 == 0 for p in queries)
        assert [y[p] for p in queries] == [context[x_in[p]] for p in queries]
        answered = set(queries) | {p + 1 for p in queries}
        assert all(stream[p] == pad for p in range(2 * pairs, t.seq_len) if p not in answered)


def test_induction_predicts_the_repeat():
    t, inputs, targets, mask = batch("induction")
    lengths = set()
    for x_in, y, m in zip(inputs, targets, mask):
        stream = x_in + [y[-1]]
        first = stream[0]
        copy_len = stream.index(first, 1)
        lengths.add(copy_len)
        x = stream[:copy_len]
        assert len(set(x)) == copy_len  # distinct tokens: the earlier occurrence is unique
        assert stream == x + x + [t.vocab_size] * (len(stream) - 2 * copy_len)
        assert [p for p in range(t.length) if m[p]] == list(range(copy_len, 2 * copy_len - 1))
        assert scored(y, m) == x[1:]
    assert len(lengths) > 2  # the repeat starts at different positions


def test_selective_copy_copies_the_data_tokens_in_order():
    t, inputs, targets, mask = batch("selective_copy")
    n, k, noise = t.seq_len, t.num_tokens, t.vocab_size
    for x_in, y, m in zip(inputs, targets, mask):
        region = x_in[:n]
        data = [v for v in region if v != noise]
        assert len(data) == k
        assert scored(y, m) == data and m == [False] * (n - 1) + [True] * k
        assert x_in[n:] == data[:-1]  # teacher forcing


def test_modular_addition_split_and_answers():
    t = task("modular_addition")
    p = t.p
    train = {tuple(pair) for pair in t.train_pairs.tolist()}
    held = {tuple(pair) for pair in t.held_out.tolist()}
    assert not train & held and len(train | held) == p * p and len(train) == round(0.4 * p * p)
    inputs, targets, mask = t.sample(300, torch.Generator().manual_seed(0))
    assert {tuple(row[:2]) for row in inputs.tolist()} <= train  # training batches never see a held-out pair
    val = t.validation_set(10_000, torch.Generator().manual_seed(0))
    assert {tuple(row[:2]) for row in val[0].tolist()} == held  # validation is all of the rest
    for inputs, targets, mask in ((inputs, targets, mask), val):
        for (a, b, eq), y, m in zip(inputs.tolist(), targets.tolist(), mask.tolist()):
            assert eq == p and m == [False, False, True] and y[-1] == (a + b) % p
    assert t.target_attention(inputs, 0) is None  # no fixed pattern, and it does not pretend to have one


@pytest.mark.parametrize("name", sorted(SIZES))
def test_seeded_and_different_per_seed(name):
    t = task(name)
    a = t.sample(32, torch.Generator().manual_seed(5))
    b = t.sample(32, torch.Generator().manual_seed(5))
    c = t.sample(32, torch.Generator().manual_seed(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_modular_addition_split_depends_on_split_seed_only():
    assert torch.equal(task("modular_addition").held_out, task("modular_addition").held_out)
    assert not torch.equal(task("modular_addition").held_out, task("modular_addition", split_seed=1).held_out)


@pytest.mark.parametrize(
    "name,overrides,field",
    [
        ("mqar", dict(num_kv_pairs=4, seq_len=15), "data.seq_len"),  # 4 * 4 > 15
        ("mqar", dict(num_kv_pairs=3, vocab_size=5), "data.vocab_size"),  # 2 keys for 3 pairs
        ("mqar", dict(num_kv_pairs=0), "data.num_kv_pairs"),
        ("induction", dict(seq_len=9, vocab_size=8), "data.vocab_size"),
        ("selective_copy", dict(num_tokens=10), "data.num_tokens"),
        ("selective_copy", dict(num_tokens="a"), "data.num_tokens"),
        ("histogram", dict(seq_len=1), "data.seq_len"),
        ("majority", dict(vocab_size=1), "data.vocab_size"),
        ("modular_addition", dict(p=9), "data.p"),
        ("modular_addition", dict(p=1), "data.p"),
        ("modular_addition", dict(train_fraction=1.0), "data.train_fraction"),
        ("modular_addition", dict(train_fraction=0), "data.train_fraction"),
        ("modular_addition", dict(train_fraction="half"), "data.train_fraction"),
    ],
)
def test_constraints(name, overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        task(name, **overrides)


# Target attention: (task, layer) pairs that have a pattern; every other layer has none.
TARGET_LAYERS = {
    "copy": [0], "reverse": [0], "sort": [1], "histogram": [0], "majority": [0],
    "mqar": [0, 1], "induction": [0, 1], "selective_copy": [1], "modular_addition": [],
}


@pytest.mark.parametrize("name", sorted(TARGET_LAYERS))
def test_target_patterns_are_well_formed(name):
    t = task(name)
    inputs, targets, mask = t.sample(64, torch.Generator().manual_seed(3))
    for layer in range(3):
        pattern = t.target_attention(inputs, layer)  # [batch, query, key]
        if layer not in TARGET_LAYERS[name]:
            assert pattern is None
            continue
        assert pattern.shape == (64, t.length, t.length) and (pattern >= 0).all()
        rows = pattern.sum(-1)
        has = rows > 0
        assert has.any(dim=1).all()  # every example has target rows
        torch.testing.assert_close(rows[has], torch.ones(int(has.sum())))  # target rows sum to 1, others are 0
        if t.causal:
            assert (pattern.triu(1) == 0).all()  # nothing on future keys
        for b, query, key in pattern.nonzero().tolist()[:400]:
            cell_ok(name, t, layer, inputs[b], targets[b], query, key)


def cell_ok(name, t, layer, inputs, targets, query, key):
    """What a target cell must be, worked out from the tokens (not from the task's own code)."""
    if name in ("copy", "reverse", "sort", "selective_copy") or (name in ("mqar", "induction") and layer == 1):
        assert inputs[key] == targets[query]  # the key holds the token the query must write
    elif name in ("mqar", "induction"):  # layer 0: previous token
        assert key == query - 1
    elif name == "histogram":
        assert key == 0 or inputs[key] == inputs[query]  # BOS or the same token
    elif name == "majority":
        assert query == t.length - 1 and key < t.length - 1  # the answer on the data

