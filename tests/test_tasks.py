"""copy, reverse, sort: targets against an independent per-example computation (seeded determinism of every task
is in test_tasks_suite.py)."""

import pytest
import torch
from omegaconf import OmegaConf

from attnlab.config import ConfigError
from attnlab.tasks import make_task

ANSWER = {"copy": lambda x: list(x), "reverse": lambda x: list(reversed(x)), "sort": sorted}


def task(name, seq_len=6, vocab_size=7):
    return make_task(OmegaConf.create({"task": name, "seq_len": seq_len, "vocab_size": vocab_size,
                                       "batch_size": 4, "val_size": 8}))


@pytest.mark.parametrize("name", ["copy", "reverse", "sort"])
def test_targets_are_the_answer(name):
    t = task(name)
    inputs, targets, mask = t.sample(64, torch.Generator().manual_seed(1))
    n = t.seq_len
    assert inputs.shape == targets.shape == mask.shape == (64, 2 * n - 1)
    for row_in, row_target, row_mask in zip(inputs.tolist(), targets.tolist(), mask.tolist()):
        x = row_in[:n]
        assert all(0 <= v < t.vocab for v in row_in)
        assert [v for v, m in zip(row_target, row_mask) if m] == ANSWER[name](x)  # scored positions = answer
        assert row_target[: n - 1] == x[1:]  # the next-token stream is consistent with the input
        assert row_in[n:] == ANSWER[name](x)[:-1]  # teacher forcing feeds the answer so far


# The layer of the copying head: sort's needs a layer that counts before it (attnlab/tasks/sort.py).
COPYING_LAYER = {"copy": 0, "reverse": 0, "sort": 1}


@pytest.mark.parametrize("name", ["copy", "reverse", "sort"])
def test_target_attention_points_at_the_source_token(name):
    t = task(name)
    inputs, targets, mask = t.sample(16, torch.Generator().manual_seed(2))
    pattern = t.target_attention(inputs, layer=COPYING_LAYER[name])  # [batch, query, key]
    n = t.seq_len
    rows = pattern[:, n - 1 :]
    torch.testing.assert_close(rows.sum(-1), torch.ones(16, n))
    # The key each answer row points at holds exactly the token the answer must produce.
    source_tokens = inputs.gather(1, rows.argmax(-1))
    assert torch.equal(source_tokens, targets[:, n - 1 :])
    assert (pattern.triu(1) == 0).all()  # nothing on future keys


@pytest.mark.parametrize("field,value", [("seq_len", 1), ("seq_len", "abc"), ("vocab_size", 1), ("vocab_size", 0)])
def test_sizes_out_of_range(field, value):
    with pytest.raises(ConfigError, match=f"data.{field}"):
        task("reverse", **{field: value})


def test_unknown_task():
    with pytest.raises(ConfigError, match="data.task must be one of .*reverse"):
        task("nope")
