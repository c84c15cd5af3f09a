"""The attention layer against the article it follows (README: "注意力机制"), and its shapes and masking."""

import math

import pytest
import torch
import torch.nn.functional as F

from attnlab.attention import SelfAttention
from attnlab.model import AttentionModel


def article(input_sequence, random_weights_key, random_weights_query, random_weights_value):
    """The article's worked example, step for step, with its names: key, query and value are the input times a
    random 3x3 matrix each, the scores query @ key.T / sqrt(3), their softmax the weights, the output weights @
    value."""
    key = torch.matmul(input_sequence, random_weights_key)
    query = torch.matmul(input_sequence, random_weights_query)
    value = torch.matmul(input_sequence, random_weights_value)
    attention_scores = torch.matmul(query, key.T) / torch.sqrt(torch.tensor(query.size(-1), dtype=torch.float32))
    attention_weights = F.softmax(attention_scores, dim=-1)
    output = torch.matmul(attention_weights, value)
    return output, attention_weights


def test_reproduces_the_article_example():
    x = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]])
    torch.manual_seed(0)
    W_K, W_Q, W_V = (torch.randn(3, 3) for _ in range(3))
    expected_output, expected_weights = article(x, W_K, W_Q, W_V)

    layer = SelfAttention(dim=3, heads=1, causal=False)
    with torch.no_grad():
        layer.W_Q.copy_(W_Q), layer.W_K.copy_(W_K), layer.W_V.copy_(W_V)
        layer.W_O.copy_(torch.eye(3))  # the article has no output projection
        output, weights = layer(x.unsqueeze(0))

    torch.testing.assert_close(weights[0, 0], expected_weights, atol=1e-6, rtol=0)
    torch.testing.assert_close(output[0], expected_output, atol=1e-6, rtol=0)
    # Not vacuous at 1e-6: the weights are well away from uniform, and transposed projections would not match.
    assert (expected_weights - 1 / 3).abs().max() > 1e-2
    with torch.no_grad():
        layer.W_Q.copy_(W_Q.T), layer.W_K.copy_(W_K.T), layer.W_V.copy_(W_V.T)
        assert (layer(x.unsqueeze(0))[0][0] - expected_output).abs().max() > 1e-3


@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("causal", [False, True])
def test_shapes_and_rows_sum_to_one(heads, causal):
    layer = SelfAttention(dim=16, heads=heads, causal=causal)
    x = torch.randn(3, 7, 16)
    output, weights = layer(x)
    assert output.shape == (3, 7, 16)
    assert weights.shape == (3, heads, 7, 7)  # [batch, head, query, key]
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, heads, 7))


def test_causal_mask_hides_the_future():
    layer = SelfAttention(dim=8, heads=2, causal=True)
    x = torch.randn(2, 5, 8)
    output, weights = layer(x)
    future = torch.ones(5, 5, dtype=torch.bool).triu(1)
    assert (weights[..., future] == 0).all()
    assert (weights[..., ~future] > 0).all()
    # Changing a later token leaves earlier outputs unchanged.
    changed = x.clone()
    changed[:, 3:] += 1.0
    torch.testing.assert_close(layer(changed)[0][:, :3], output[:, :3])


def test_heads_split_the_embedding():
    """Each head's weights come from its own slice of Q and K: zeroing head 1's slice makes it uniform."""
    layer = SelfAttention(dim=8, heads=2, causal=False)
    with torch.no_grad():
        layer.W_Q[:, 4:] = 0
    _, weights = layer(torch.randn(1, 6, 8))
    torch.testing.assert_close(weights[0, 1], torch.full((6, 6), 1 / 6))
    assert (weights[0, 0] - 1 / 6).abs().max() > 1e-3


def test_heads_must_divide_dim():
    with pytest.raises(ValueError, match="model.heads"):
        SelfAttention(dim=10, heads=3, causal=False)


@pytest.mark.parametrize("causal", [False, True])
def test_fast_path_matches_the_article_steps(causal):
    layer = SelfAttention(dim=16, heads=4, causal=causal)
    x = torch.randn(2, 9, 16)
    explicit, _ = layer(x, need_weights=True)
    fast, none = layer(x, need_weights=False)
    assert none is None
    torch.testing.assert_close(fast, explicit, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "none"])
@pytest.mark.parametrize("mlp,norm", [(False, False), (True, True)])
def test_model_shapes(positions, mlp, norm):
    model = AttentionModel(vocab_size=11, seq_len=9, dim=16, heads=2, layers=3, positions=positions,
                           causal=True, mlp=mlp, norm=norm)
    logits, attention = model(torch.randint(11, (4, 9)), need_weights=True)
    assert logits.shape == (4, 9, 11)
    assert [w.shape for w in attention] == [(4, 2, 9, 9)] * 3
    assert model(torch.randint(11, (4, 9)))[1] == []


def test_sinusoidal_positions_differ_per_position():
    model = AttentionModel(11, 9, 16, 1, 1, "sinusoidal", True, False, False)
    table = model.positions
    assert table.shape == (9, 16) and not table.requires_grad
    assert torch.cdist(table, table).add(torch.eye(9) * 10).min() > 0.1
    assert math.isclose(table[0, 1].item(), 1.0)  # cos(0)
