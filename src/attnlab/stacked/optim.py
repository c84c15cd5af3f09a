"""The stacked optimiser: StackedAdamW, AdamW with a learning rate, a weight decay and a step count per member."""

import torch
from torch import Tensor

# ---- the optimiser: AdamW with a learning rate, a weight decay and a step count per member --------------------------


class StackedAdamW(torch.optim.Optimizer):
    """torch.optim.AdamW's update (its single-tensor path, the one it takes on the CPU), for parameters whose first
    dimension is the member, with lr, weight_decay and the step count per member ([member] tensors). `active`
    [member] bool: a member that is not (stopped, failed) is not moved at all: neither its weights, nor its moments,
    nor its step count. The lr is set before each step (StackedLM: the member's schedule at that step)."""

    def __init__(self, params, weight_decay: Tensor, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, dict(betas=betas, eps=eps))
        members = len(weight_decay)
        self.lr = torch.zeros(members)
        self.weight_decay = weight_decay.float()
        self.steps = torch.zeros(members)
        self.active = torch.ones(members, dtype=torch.bool)

    def to(self, device) -> "StackedAdamW":
        for name in ("lr", "weight_decay", "steps", "active"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    @torch.no_grad()
    def step(self, closure=None):
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        active = self.active
        self.steps += active
        lr = torch.where(active, self.lr, 0.0)  # lr 0: weight decay and update vanish for a member not training
        decay = 1 - lr * self.weight_decay
        bias_correction1 = 1 - beta1**self.steps.clamp(min=1)
        bias_correction2_sqrt = (1 - beta2**self.steps.clamp(min=1)).sqrt()
        step_size = lr / bias_correction1
        # The moments' weights: AdamW's for a training member, 0 (no change) for one that is not.
        new1, keep2, new2 = (torch.where(active, v, w) for v, w in ((1 - beta1, 0.0), (beta2, 1.0), (1 - beta2, 0.0)))
        for param in group["params"]:
            if param.grad is None:
                continue
            shape = (-1,) + (1,) * (param.dim() - 1)  # [member, 1, ...]: broadcast over the weight's own dims
            state = self.state[param]
            if not state:
                state["exp_avg"] = torch.zeros_like(param)
                state["exp_avg_sq"] = torch.zeros_like(param)
            exp_avg, exp_avg_sq, grad = state["exp_avg"], state["exp_avg_sq"], param.grad
            param.mul_(decay.view(shape))
            exp_avg.lerp_(grad, new1.view(shape))
            exp_avg_sq.mul_(keep2.view(shape)).addcmul_(grad * new2.view(shape), grad)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt.view(shape)).add_(group["eps"])
            param.sub_(exp_avg / denom * step_size.view(shape))

    def keep(self, kept: Tensor, params: list[torch.nn.Parameter]) -> None:
        """Only the members `kept` from now on (StackedModel.keep): `params` are the new parameters, in the order of
        the old ones, and each member's moments, step, lr and weight decay go with it."""
        group = self.param_groups[0]
        state = {new: {name: moment[kept].clone() for name, moment in self.state[old].items()}
                 for old, new in zip(group["params"], params) if old in self.state}
        group["params"] = list(params)
        self.state.clear()
        self.state.update(state)
        for name in ("lr", "weight_decay", "steps", "active"):
            setattr(self, name, getattr(self, name)[kept])

    def member_state(self, k: int) -> dict[int, dict[str, Tensor]]:
        """Member k's moments and step as torch.optim.AdamW's state_dict()["state"] (index: parameter order)."""
        params = self.param_groups[0]["params"]
        return {
            i: {"step": self.steps[k].detach().cpu().clone(), "exp_avg": self.state[p]["exp_avg"][k].clone(),
                "exp_avg_sq": self.state[p]["exp_avg_sq"][k].clone()}
            for i, p in enumerate(params) if p in self.state
        }
