"""K copies of one architecture as one model: every weight stacked on a leading member axis.

One small net leaves a CPU core or a GPU mostly idle between kernel launches; K nets whose
weights sit side by side do K times the work per launch. MLPs use batched matrix products
directly (measured faster than vmap here); every other model runs under `torch.func.vmap`
of `functional_call`, batch-norm buffers included.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .models import MLP


class _StackedLinear(torch.autograd.Function):
    """`x @ W.T + b` for each member, with the gradients `nn.Linear` computes, bit for bit.

    Autograd's own bmm backward forms the weight gradient as (x.T @ g).T, while `nn.Linear`
    forms g.T @ x; the float sums differ in the last bit and, through SGD's chaos, the runs
    differ by points of accuracy within tens of epochs. Computing the same products per
    member keeps a packed member on exactly its standalone trajectory.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias[:, None, :], x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None  # not for the input layer
        return grad_x, torch.bmm(grad.transpose(1, 2), x), grad.sum(1)


class StackedModel:
    """Stacked parameters (leaf tensors, shape (K, ...)) and buffers of K same-shaped models."""

    def __init__(self, models: list[nn.Module]):
        self.base = models[0]
        params, buffers = stack_module_state(models)
        self.names = [name for name, _ in self.base.named_parameters()]  # model.parameters() order
        self.params = [params[n].detach().clone().requires_grad_(True) for n in self.names]
        self.buffer_names = list(buffers)
        self.buffers = [buffers[n].detach().clone() for n in self.buffer_names]
        self._mlp = isinstance(self.base, MLP)
        self._vmapped = None

    @property
    def size(self) -> int:
        return self.params[0].shape[0]

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    def forward(self, x: torch.Tensor, shared_input: bool) -> torch.Tensor:
        """Logits (K, B, classes) for inputs (K, B, ...), or (B, ...) fed to every member."""
        if self._mlp:
            return self._forward_mlp(x, shared_input)
        if self._vmapped is None:
            def call(params, buffers, xb):
                return functional_call(self.base, ({**dict(zip(self.names, params)),
                                                     **dict(zip(self.buffer_names, buffers))},), (xb,))
            self._vmapped = {True: vmap(call, in_dims=(0, 0, None), randomness="error"),
                             False: vmap(call, in_dims=(0, 0, 0), randomness="error")}
        return self._vmapped[shared_input](self.params, self.buffers, x)

    def _forward_mlp(self, x: torch.Tensor, shared_input: bool) -> torch.Tensor:
        h = x.flatten(1).expand(self.size, -1, -1) if shared_input else x.flatten(2)
        layers = iter(self.params)
        for module in self.base.net:
            if isinstance(module, nn.Linear):
                h = _StackedLinear.apply(h, next(layers), next(layers))
            elif isinstance(module, nn.ReLU):
                h = torch.relu(h)
        return h

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's weights as a standalone model's state_dict."""
        state = {n: p[k].detach().clone() for n, p in zip(self.names, self.params)}
        state.update({n: b[k].clone() for n, b in zip(self.buffer_names, self.buffers)})
        return state

    def keep(self, members: list[int]) -> None:
        """Drop every member not listed (finished or diverged); the rest keep their state."""
        index = torch.tensor(members, device=self.params[0].device)
        self.params = [p.detach()[index].clone().requires_grad_(True) for p in self.params]
        self.buffers = [b[index].clone() for b in self.buffers]
