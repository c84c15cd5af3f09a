"""The fast path (F.scaled_dot_product_attention, no weights) computes what the article's explicit steps compute,
forwards and backwards; training steps take it, and logging/probing take the explicit path."""

import pytest
import torch
import torch.nn.functional as F

from attnlab import attention
from attnlab.attention import SelfAttention
from attnlab.model import AttentionModel


def outputs_and_gradients(module: torch.nn.Module, x: torch.Tensor, need_weights: bool):
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(x.is_floating_point())
    output, weights = module(x, need_weights)
    output.square().sum().backward()  # a loss that depends on every output element
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    return output.detach(), weights, grads, x.grad


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dim,heads,length", [(8, 1, 5), (32, 4, 15), (64, 2, 33)])
def test_layer_fast_and_explicit_paths_agree(causal, dim, heads, length):
    torch.manual_seed(0)
    layer = SelfAttention(dim, heads, causal)
    x = torch.randn(3, length, dim)
    explicit, weights, explicit_grads, explicit_dx = outputs_and_gradients(layer, x, need_weights=True)
    fast, no_weights, fast_grads, fast_dx = outputs_and_gradients(layer, x, need_weights=False)

    assert weights.shape == (3, heads, length, length) and no_weights is None
    torch.testing.assert_close(fast, explicit, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_dx, explicit_dx, rtol=1e-4, atol=1e-5)
    assert set(fast_grads) == {"W_Q", "W_K", "W_V", "W_O"}
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], explicit_grads[name], rtol=1e-4, atol=1e-5, msg=name)
    # The gradients are real, not all zero (a detached path would pass the comparisons above).
    assert all(g.abs().sum() > 0 for g in fast_grads.values())
    if causal:  # the explicit weights respect the mask the fused kernel was given
        assert torch.all(weights.triu(1) == 0)


def test_model_fast_and_explicit_paths_agree():
    torch.manual_seed(0)
    model = AttentionModel(
        vocab_size=10, seq_len=15, dim=32, heads=2, layers=2, positions="learned", causal=True, mlp=True, norm=True
    )
    tokens = torch.randint(10, (4, 15))
    results = {}
    for need_weights in (True, False):
        model.zero_grad(set_to_none=True)
        logits, attention_maps = model(tokens, need_weights)
        F.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
        results[need_weights] = logits.detach(), attention_maps, {n: p.grad.clone() for n, p in model.named_parameters()}
    (explicit, maps, explicit_grads), (fast, no_maps, fast_grads) = results[True], results[False]
    assert len(maps) == 2 and no_maps == []
    torch.testing.assert_close(fast, explicit, rtol=1e-5, atol=1e-5)
    for name in explicit_grads:
        torch.testing.assert_close(fast_grads[name], explicit_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_training_steps_take_the_fused_kernel_and_logging_the_explicit_path(tmp_path, monkeypatch):
    """A real short run with attention images on: every attention call made with gradients on (a training step)
    asks for no weights, so it goes through F.scaled_dot_product_attention; the logging callbacks ask for them."""
    from hydra import compose, initialize_config_dir

    from attnlab.train import run
    from conftest import ROOT, TINY_RUN

    calls = []  # (grad enabled, need_weights, fused kernel called) per SelfAttention.forward
    forward, sdpa = SelfAttention.forward, F.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls[-1][2] = True
        return sdpa(*args, **kwargs)

    def recording_forward(self, x, need_weights=True, keep=None):
        calls.append([torch.is_grad_enabled(), need_weights, False])
        return forward(self, x, need_weights, keep)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", counting_sdpa)
    monkeypatch.setattr(SelfAttention, "forward", recording_forward)
    overrides = [o for o in TINY_RUN if not o.startswith("trainer.max_steps")] + ["trainer.max_steps=4"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    run(cfg, tmp_path)

    training = [c for c in calls if c[0]]
    assert len(training) == 4 * cfg.model.layers  # 4 steps, one call per layer
    assert all(not need_weights and fused for _, need_weights, fused in training)
    logging = [c for c in calls if c[1]]
    assert logging and all(not grad and not fused for grad, _, fused in logging)


def test_plain_steps_train_as_lightnings_steps_and_give_way_to_a_listening_callback(tmp_path):
    """Training steps call backward and the optimiser directly where nothing listens to Lightning's step hooks
    (module.STEP_HOOKS). A callback that overrides one gets Lightning's manual_backward/LightningOptimizer path and
    its calls; both paths train to the same weights at the same global_step."""
    import lightning.pytorch as L
    from hydra import compose, initialize_config_dir

    from attnlab import module as module_file
    from attnlab.train import run
    from conftest import ROOT, TINY_RUN

    class Listener(L.Callback):
        def __init__(self):
            self.calls = {hook: 0 for hook in module_file.STEP_HOOKS}

        def on_before_backward(self, trainer, module, loss):
            self.calls["on_before_backward"] += 1

        def on_after_backward(self, trainer, module):
            self.calls["on_after_backward"] += 1

        def on_before_optimizer_step(self, trainer, module, optimizer):
            self.calls["on_before_optimizer_step"] += 1

    class Seen(L.Callback):  # the module's plain_steps flag and the weights, once training ends
        def on_train_end(self, trainer, module):
            self.plain, self.step = module.plain_steps, trainer.global_step
            self.weights = {k: v.clone() for k, v in module.state_dict().items()}

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=TINY_RUN + ["logging=off", "optim.warmup_steps=3"])
    plain, listener, lightning = Seen(), Listener(), Seen()
    run(cfg, tmp_path / "plain", extra_callbacks=[plain])
    run(cfg, tmp_path / "lightning", extra_callbacks=[listener, lightning])

    assert plain.plain and not lightning.plain
    assert listener.calls == {hook: cfg.trainer.max_steps for hook in module_file.STEP_HOOKS}
    assert plain.step == lightning.step == cfg.trainer.max_steps
    assert plain.weights.keys() == lightning.weights.keys()
    for name in plain.weights:
        torch.testing.assert_close(plain.weights[name], lightning.weights[name], rtol=0, atol=0, msg=name)
