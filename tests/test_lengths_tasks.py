"""Tasks at lengths of their own (data.min_len) and at any length (sample(length=k)): lengths drawn uniformly,
padding on the right only and never scored or targeted, answers and target patterns per example at its own length
(against plain-Python references), bad lengths refused; and fixed-length runs (min_len null) bit for bit what they
were before lengths existed (against a copy of those formulas)."""

from collections import Counter
from functools import partial

import pytest
import torch
from omegaconf import OmegaConf

from attnlab.config import ConfigError
from attnlab.tasks import TASKS, make_task

# Small sizes with every length in play: (the task's own fields, min_len).
SIZES = {
    "copy": (dict(seq_len=6, vocab_size=5), 2),
    "reverse": (dict(seq_len=6, vocab_size=5), 1),
    "sort": (dict(seq_len=6, vocab_size=4), 2),
    "histogram": (dict(seq_len=7, vocab_size=3), 2),
    "majority": (dict(seq_len=6, vocab_size=3), 1),
    "selective_copy": (dict(seq_len=9, vocab_size=5, num_tokens=3), 4),
    "induction": (dict(seq_len=6, vocab_size=12), 3),
    "mqar": (dict(num_kv_pairs=2, seq_len=15, vocab_size=10), 9),
}
VARIABLE = sorted(SIZES)
ANSWER = {"copy": list, "reverse": lambda x: x[::-1], "sort": sorted}
# Layers with a target when lengths vary (copy's and reverse's pointer moves to layer 1: SequenceMap.pointer_layer).
TARGET_LAYERS = {"copy": [1], "reverse": [1], "sort": [1], "histogram": [0], "majority": [0],
                 "selective_copy": [1], "induction": [0, 1], "mqar": [0, 1]}


def task(name, min_len="default", **overrides):
    fields, default = SIZES.get(name, ({}, None))
    data = {"task": name, **fields, **overrides, "batch_size": 4, "val_size": 8}
    if min_len is not None:
        data["min_len"] = default if min_len == "default" else min_len
    return make_task(OmegaConf.create(data))


def stream_of(name, inputs, targets):
    """One example's whole token stream: a next-token task's inputs and its last target; else the inputs."""
    return inputs if name in ("histogram", "majority") else inputs + [targets[-1]]


def data_length(t, name, stream):
    """The example's data length, read from its tokens as a user would (not by the task's code)."""
    names = t.token_names()
    words = [names[v] for v in stream]
    if name in ("copy", "reverse", "sort", "selective_copy"):
        return words.index("|")
    if name == "majority":
        return words.index("=")
    if name == "histogram":
        return sum(w != "_" for w in words) - 1  # BOS
    if name == "induction":
        return stream.index(stream[0], 1)
    return sum(w != "." for w in words)  # mqar: its stream's length


def check_example(t, name, inputs, targets, mask, n):
    """One example (lists) of data length n against a plain-Python reference of the task's rules."""
    names = t.token_names()
    stream = stream_of(name, inputs, targets)
    words = [names[v] for v in stream]
    scored = [y for y, m in zip(targets, mask) if m]
    if name in ANSWER:
        x = stream[:n]
        assert stream == x + [t.vocab_size] + ANSWER[name](x) + [t.vocab_size + 1] * (len(stream) - 2 * n - 1)
        assert scored == ANSWER[name](x) and mask == [False] * n + [True] * n + [False] * (len(mask) - 2 * n)
    elif name == "histogram":
        x = inputs[1 : n + 1]
        assert words[0] == "BOS" and all(w == "_" for w in words[n + 1 :])
        assert [names[c] for c in scored] == [f"#{x.count(v)}" for v in x]
        assert mask == [False] + [True] * n + [False] * (len(mask) - n - 1)
    elif name == "majority":
        x = inputs[:n]
        (top, count), *rest = Counter(x).most_common()
        assert not rest or rest[0][1] < count
        assert words[n] == "=" and all(w == "_" for w in words[n + 1 :]) and scored == [top] and mask.index(True) == n
    elif name == "selective_copy":
        region, k = stream[:n], t.num_tokens
        data = [v for v in region if v != t.noise]
        assert len(data) == k and all(v < t.vocab_size or v == t.noise for v in region)
        assert stream == region + [t.separator] + data + [t.pad] * (len(stream) - n - 1 - k)
        assert scored == data and mask == [False] * n + [True] * k + [False] * (len(mask) - n - k)
    elif name == "induction":
        x = stream[:n]
        assert len(set(x)) == n and stream == x + x + [t.pad] * (len(stream) - 2 * n)
        assert scored == x[1:] and mask == [False] * n + [True] * (n - 1) + [False] * (len(mask) - 2 * n + 1)
    else:  # mqar
        pairs = t.num_kv_pairs
        context = dict(zip(stream[0 : 2 * pairs : 2], stream[1 : 2 * pairs : 2]))
        assert len(context) == pairs and all(w == "." for w in words[n:]) and "." not in words[:n]
        queries = [p for p, m in enumerate(mask) if m]
        assert sorted(inputs[p] for p in queries) == sorted(context) and all(p + 1 < n for p in queries)
        assert [targets[p] for p in queries] == [context[inputs[p]] for p in queries]


def check_targets(t, name, inputs, targets, layers):
    """Target patterns of a batch: rows sum to 1 or 0, nothing on pads or future keys, pad rows empty, each cell on
    the key the mechanism reads (worked out from the tokens)."""
    width = inputs.shape[1]
    pad = inputs == t.pad if t.variable else torch.zeros_like(inputs, dtype=torch.bool)  # [batch, pos]
    for layer in range(3):
        pattern = t.target_attention(inputs, layer)  # [batch, query, key]
        if layer not in layers:
            assert pattern is None
            continue
        assert pattern.shape == (len(inputs), width, width) and (pattern >= 0).all()
        rows = pattern.sum(-1)
        torch.testing.assert_close(rows[rows > 0], torch.ones(int((rows > 0).sum()))) and (rows > 0).any(dim=1).all()
        assert (pattern * pad.unsqueeze(1)).sum() == 0 and (rows * pad).sum() == 0  # pads: no key, no query
        if t.causal:
            assert (pattern.triu(1) == 0).all()
        for b, query, key in pattern.nonzero().tolist()[:300]:
            row_in, row_target = inputs[b].tolist(), targets[b].tolist()
            if name in ("copy", "reverse", "sort", "selective_copy") or (name in ("mqar", "induction") and layer == 1):
                assert row_in[key] == row_target[query]  # the key holds the token the query must write
            elif name in ("mqar", "induction"):
                assert key == query - 1
            elif name == "histogram":
                assert key == 0 or row_in[key] == row_in[query]
            else:  # majority: the `=` on the data before it
                assert t.token_names()[row_in[query]] == "=" and key < query


@pytest.mark.parametrize("name", VARIABLE)
def test_training_batches_at_lengths_of_their_own(name):
    t = task(name)
    assert t.variable and t.padding == t.pad and t.length == t.positions(t.seq_len)
    n_examples = 1200
    inputs, targets, mask = t.sample(n_examples, torch.Generator().manual_seed(0))
    assert inputs.shape == targets.shape == mask.shape == (n_examples, t.length)
    assert 0 <= inputs.min() and inputs.max() < t.vocab and len(t.token_names()) == t.vocab == len(set(t.token_names()))
    real = inputs != t.padding
    assert real[:, 0].all()  # position 0 is a real token: no attention row is ever empty
    assert (real.cummin(dim=1).values == real).all()  # pads only on the right
    assert not (mask & ~real).any() and not (mask & (targets == t.padding)).any()  # never scored on a pad
    lengths = Counter()
    for row_in, row_target, row_mask in zip(inputs.tolist(), targets.tolist(), mask.tolist()):
        n = data_length(t, name, stream_of(name, row_in, row_target))
        lengths[n] += 1
        check_example(t, name, row_in, row_target, row_mask, n)
    # Uniform over [min_len, seq_len]: every length, each within 25% of its share (over 4 standard deviations).
    assert sorted(lengths) == list(range(t.min_len, t.seq_len + 1))
    share = n_examples / len(lengths)
    assert all(abs(c - share) < 0.25 * share for c in lengths.values()), lengths
    check_targets(t, name, inputs, targets, TARGET_LAYERS[name])


@pytest.mark.parametrize("name", VARIABLE)
def test_every_example_at_one_length(name):
    """validation_set(length=k): every example exactly k, its tensors positions(k) wide, beyond seq_len too."""
    t = task(name)
    ks = {t.shortest, t.seq_len - 1, min(2 * t.seq_len, t.longest), min(4 * t.seq_len, t.longest)}
    for k in sorted(ks):
        inputs, targets, mask = t.validation_set(64, torch.Generator().manual_seed(k), length=k)
        assert inputs.shape == targets.shape == mask.shape == (64, t.positions(k))
        assert inputs.max() < t.vocab
        for row_in, row_target, row_mask in zip(inputs.tolist(), targets.tolist(), mask.tolist()):
            assert data_length(t, name, stream_of(name, row_in, row_target)) == k
            check_example(t, name, row_in, row_target, row_mask, k)
        check_targets(t, name, inputs, targets, TARGET_LAYERS[name])
    assert t.validation_set(8, torch.Generator().manual_seed(0), length=t.seq_len)[0].shape[1] == t.length


def test_longest_lengths_are_the_tasks_own():
    """Past data.seq_len: 1024 in general; histogram's counts have tokens up to seq_len only, induction's first copy
    is distinct tokens (vocab_size of them)."""
    assert task("copy").longest == 1024 and task("copy").positions(1024) == 2048
    assert task("histogram").longest == 7 and task("induction").longest == 12
    with pytest.raises(ConfigError, match=r"length must be in \[1, 7\], got 8"):
        task("histogram").sample(4, torch.Generator(), length=8)
    with pytest.raises(ConfigError, match=r"length must be in \[2, 12\], got 13"):
        task("induction").sample(4, torch.Generator(), length=13)
    with pytest.raises(ConfigError, match=r"length must be in \[8, 1024\], got 7"):  # 4 * num_kv_pairs
        task("mqar").validation_set(4, torch.Generator(), length=7)
    with pytest.raises(ConfigError, match="data.val_lengths must be in"):
        task("copy").check_length(1025, "data.val_lengths")
    with pytest.raises(ConfigError, match=r"length must be in \[2, 2\]"):
        task("modular_addition", min_len=None, p=7, train_fraction=0.5, split_seed=0).validation_set(4, None, length=3)


@pytest.mark.parametrize("name", ["copy", "reverse", "sort", "histogram", "majority"])
@pytest.mark.parametrize("variable", [True, False])
def test_a_users_example_at_any_length(name, variable):
    """example(x) at several lengths is the stream `sample` makes at that length (what inspect_run.py --input shows),
    in a fixed-length run too (without a separator there)."""
    t = task(name, min_len="default" if variable else None)
    for k in (1, 3, t.seq_len, 2 * t.seq_len):
        if not t.shortest <= k <= t.longest:
            continue
        inputs, targets, mask = t.sample(16, torch.Generator().manual_seed(k), length=k)
        x = inputs[:, 1 : k + 1] if name == "histogram" else inputs[:, :k]
        made = t.example(x)
        assert all(torch.equal(a, b) for a, b in zip(made, (inputs, targets, mask)))
        assert made[0].shape[1] == t.positions(k) == t.example_positions(k) and mask.sum(1).min() > 0
    with pytest.raises(ConfigError, match="the example's length must be in"):
        t.example(torch.zeros(1, t.longest + 1, dtype=torch.long))


@pytest.mark.parametrize("name", ["selective_copy", "induction", "mqar"])
def test_a_users_whole_input_at_any_length(name):
    """Tasks that cannot work out the answer take the model's whole input as is: example_positions(k) is k."""
    t = task(name)
    inputs = t.sample(2, torch.Generator().manual_seed(0), length=t.seq_len + 2)[0]
    made = t.example(inputs)
    assert torch.equal(made[0], inputs) and not made[2].any()
    assert t.example_positions(inputs.shape[1]) == inputs.shape[1] == t.positions(t.seq_len + 2)


def test_fixed_length_runs_read_nothing_new():
    """min_len null: no padding to mask, no new tokens, a fixed-length example is as wide as ever."""
    for name in VARIABLE:
        t, v = task(name, min_len=None), task(name)
        assert not t.variable and t.padding is None and t.min_len is None
        assert v.vocab > t.vocab or name == "induction"  # induction's pad was a token already
        assert t.token_names() == v.token_names()[: t.vocab]  # new tokens only after today's ids
    assert task("copy", min_len=None).positions(5) == 9 and task("copy").positions(5) == 10


@pytest.mark.parametrize(
    "name,min_len,allowed",
    [
        ("copy", 7, "[1, 6]"),  # above data.seq_len
        ("copy", 0, "[1, 6]"),
        ("copy", 2.5, "[1, 6]"),
        ("copy", "four", "[1, 6]"),
        ("copy", True, "[1, 6]"),
        ("induction", 1, "[2, 6]"),  # a copy of one token predicts nothing
        ("selective_copy", 2, "[3, 9]"),  # below num_tokens
        ("mqar", 7, "[8, 15]"),  # below 4 * num_kv_pairs
    ],
)
def test_bad_min_len(name, min_len, allowed):
    expected = r"^data\.min_len must be null .* or an integer in " + allowed.replace("[", r"\[")
    with pytest.raises(ConfigError, match=expected):
        task(name, min_len=min_len)


def test_modular_addition_has_no_length():
    with pytest.raises(ConfigError, match=r"^data\.min_len must be null for modular_addition"):
        task("modular_addition", min_len=2, p=7, train_fraction=0.5, split_seed=0)
    t = task("modular_addition", min_len=None, p=7, train_fraction=0.5, split_seed=0)
    assert t.padding is None and not t.variable and t.shortest == t.longest == 2
    assert t.length == t.positions(2) == t.example_positions(2) == t.example(torch.tensor([[3, 5]]))[0].shape[1] == 3


# --- Fixed-length runs, bit for bit: the formulas every task used before data.min_len existed, copied here. ---

def old_sequence_map(name, n, gen, seq_len, vocab_size):
    x = torch.randint(vocab_size, (n, seq_len), generator=gen)
    source = {"copy": torch.arange(seq_len).expand_as(x), "reverse": torch.arange(seq_len - 1, -1, -1).expand_as(x),
              "sort": torch.sort(x, dim=1, stable=True).indices}[name]
    stream = torch.cat([x, x.gather(1, source)], dim=1)
    mask = torch.zeros(n, 2 * seq_len - 1, dtype=torch.bool)
    mask[:, seq_len - 1 :] = True
    return stream[:, :-1], stream[:, 1:], mask


def old_histogram(n, gen, seq_len, vocab_size):
    x = torch.randint(vocab_size, (n, seq_len), generator=gen)
    counts = (x.unsqueeze(2) == x.unsqueeze(1)).sum(-1)
    bos = torch.full((n, 1), vocab_size)
    mask = torch.ones(n, seq_len + 1, dtype=torch.bool)
    mask[:, 0] = False
    return torch.cat([bos, x], 1), torch.cat([torch.zeros_like(bos), vocab_size + counts], 1), mask


def old_majority(n, gen, seq_len, vocab_size):
    def modes(x):
        counts = torch.zeros(x.shape[0], vocab_size, dtype=torch.long).scatter_add_(1, x, torch.ones_like(x))
        top = counts.max(dim=1)
        return top.indices, (counts == top.values.unsqueeze(1)).sum(dim=1) == 1

    x = torch.randint(vocab_size, (n, seq_len), generator=gen)
    while not (unique := modes(x)[1]).all():
        tied = (~unique).nonzero().squeeze(1)
        x[tied] = torch.randint(vocab_size, (len(tied), seq_len), generator=gen)
    inputs = torch.cat([x, torch.full((n, 1), vocab_size)], dim=1)
    targets = torch.zeros_like(inputs)
    targets[:, -1] = modes(x)[0]
    mask = torch.zeros_like(inputs, dtype=torch.bool)
    mask[:, -1] = True
    return inputs, targets, mask


def old_selective_copy(n, gen, seq_len, vocab_size, num_tokens):
    where = torch.rand(n, seq_len, generator=gen).argsort(dim=1)[:, :num_tokens].sort(dim=1).values
    data = torch.randint(vocab_size, (n, num_tokens), generator=gen)
    stream = torch.cat([torch.full((n, seq_len), vocab_size).scatter_(1, where, data), data], dim=1)
    mask = torch.zeros(n, seq_len + num_tokens - 1, dtype=torch.bool)
    mask[:, seq_len - 1 :] = True
    return stream[:, :-1], stream[:, 1:], mask


def old_induction(n, gen, seq_len, vocab_size):
    x = torch.rand(n, vocab_size, generator=gen).argsort(dim=1)[:, :seq_len]
    m = torch.randint(2, seq_len + 1, (n, 1), generator=gen)
    position = torch.arange(2 * seq_len).expand(n, -1)
    source = torch.where(position < m, position, position - m).clamp(max=seq_len - 1)
    stream = torch.where(position < 2 * m, x.gather(1, source), vocab_size)
    query = position[:, :-1]
    return stream[:, :-1], stream[:, 1:], (query >= m) & (query < 2 * m - 1)


def old_mqar(n, gen, seq_len, vocab_size, num_kv_pairs):
    pairs, slots, keys_ = num_kv_pairs, (seq_len - 2 * num_kv_pairs) // 2, vocab_size // 2
    keys = torch.rand(n, keys_, generator=gen).argsort(dim=1)[:, :pairs]
    values = torch.randint(keys_, vocab_size, (n, pairs), generator=gen)
    order = torch.rand(n, pairs, generator=gen).argsort(dim=1)
    slot = torch.rand(n, slots, generator=gen).argsort(dim=1)[:, :pairs].sort(dim=1).values
    stream = torch.full((n, seq_len), vocab_size)
    stream[:, 0 : 2 * pairs : 2], stream[:, 1 : 2 * pairs : 2] = keys, values
    query = 2 * pairs + 2 * slot
    stream.scatter_(1, query, keys.gather(1, order))
    stream.scatter_(1, query + 1, values.gather(1, order))
    mask = torch.zeros(n, seq_len - 1, dtype=torch.bool).scatter_(1, query, True)
    return stream[:, :-1], stream[:, 1:], mask


OLD = {"copy": partial(old_sequence_map, "copy"), "reverse": partial(old_sequence_map, "reverse"),
       "sort": partial(old_sequence_map, "sort"), "histogram": old_histogram, "majority": old_majority,
       "selective_copy": old_selective_copy, "induction": old_induction, "mqar": old_mqar}
OLD_VOCAB = {"copy": 0, "reverse": 0, "sort": 0, "histogram": 1, "majority": 1, "selective_copy": 1, "induction": 1,
             "mqar": 1}  # tokens added to vocab_size (histogram: + seq_len counts)


@pytest.mark.parametrize("name", VARIABLE)
def test_fixed_length_batches_are_bit_identical(name):
    """The training stream of a fixed-length run, batch after batch from one generator, and its validation set:
    the same tensors as before, so every recorded run and the recipes' ten-seed table stay as they are."""
    fields = SIZES[name][0]
    t = task(name, min_len=None)
    assert set(OLD) | {"modular_addition"} == {n for n in TASKS if not n.startswith("rasp_")}  # RASP: tasks/rasp/
    assert t.vocab == t.vocab_size + OLD_VOCAB[name] + (t.seq_len if name == "histogram" else 0)
    for seed in (0, 1):
        new_gen, old_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        for n in (64, 64, 1000):  # consecutive batches: the generator's state is consumed alike too
            new = t.sample(n, new_gen)
            was = OLD[name](n, old_gen, **fields)
            assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(new, was)), (name, seed)
        assert torch.equal(new_gen.get_state(), old_gen.get_state())
