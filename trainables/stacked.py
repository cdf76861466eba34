"""K copies of one architecture as one model: every weight stacked on a leading member axis.

One small net leaves a CPU core or a GPU mostly idle between kernel launches; K nets whose
weights sit side by side do K times the work per launch. MLPs use batched matrix products
directly, forward and backward by hand (no vmap or autograd graph to build each step);
every other model runs under `torch.func.vmap` of `functional_call`, batch-norm buffers
included.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from . import class_major
from .models import MLP


class StackedModel:
    """Stacked parameters (leaf tensors, shape (K, ...)) and buffers of K same-shaped models."""

    def __init__(self, models: list[nn.Module]):
        self.base = models[0]
        params, buffers = stack_module_state(models)
        self.names = [name for name, _ in self.base.named_parameters()]  # model.parameters() order
        self.params = [params[n].detach().clone().requires_grad_(True) for n in self.names]
        self.buffer_names = list(buffers)
        self.buffers = [buffers[n].detach().clone() for n in self.buffer_names]
        self.is_mlp = isinstance(self.base, MLP)
        self._vmapped = None
        self._grad_buffers: dict[int, torch.Tensor] = {}  # MLP weight gradients, reused every step

    @property
    def size(self) -> int:
        return self.params[0].shape[0]

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    def forward(self, x: torch.Tensor, shared_input: bool) -> torch.Tensor:
        """Logits (K, B, classes) for inputs (K, B, ...), or (B, ...) fed to every member."""
        if self.is_mlp:
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
        return self._mlp_layers(h)[-1]

    def _mlp_layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each linear layer's input (K, B, features), then the logits: `x @ W.T + b` per member."""
        weights = [p.detach() for p in self.params]
        outputs = [x]
        for i in range(0, len(weights), 2):
            h = torch.baddbmm(weights[i + 1][:, None, :], outputs[-1], weights[i].transpose(1, 2))
            outputs.append(h.relu_() if i + 2 < len(weights) else h)  # h is fresh: in place
        return outputs

    def losses_and_grads(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Per-sample cross-entropy (K, B), the logits, and the gradient of each member's mean
        batch loss for every stacked parameter (the members' gradients are independent)."""
        if self.is_mlp:
            with torch.no_grad():
                return self._mlp_losses_and_grads(x, y)
        logits = self.forward(x, shared_input=False)
        losses = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
        grads = torch.autograd.grad(losses.mean(1).sum(), self.params)
        return losses.detach(), logits.detach(), list(grads)

    def _mlp_losses_and_grads(self, x: torch.Tensor, y: torch.Tensor):
        """Forward and backward by hand, in the kernels autograd runs for `nn.Linear` + ReLU +
        `cross_entropy`, bit for bit, without building a graph (a large share of a narrow pack's step).

        The weight gradient is formed per member as g.T @ x, as `nn.Linear`'s backward forms it;
        autograd's own bmm backward forms (x.T @ g).T, whose float sums differ in the last bit,
        and through SGD's chaos a packed run would drift from its standalone run within tens of
        epochs.
        """
        aten = torch.ops.aten
        layers = self._mlp_layers(x.flatten(2))
        logits = layers.pop()
        k, b, classes = logits.shape
        log_probs, by_class = class_major.log_softmax_forward(logits.reshape(k * b, classes))
        target = y.reshape(k * b)
        losses, total_weight = aten.nll_loss_forward(log_probs, target, None, 0, -100)  # reduction "none"
        # d(sum over members of the batch mean) / d(each sample's loss), as mean's backward forms it
        grad = torch.ones(k, 1, device=x.device, dtype=logits.dtype).expand(k, b) / b
        grad = aten.nll_loss_backward(grad.reshape(k * b), log_probs, target, None, 0, -100, total_weight)
        grad = class_major.log_softmax_backward(grad, log_probs, by_class).view(k, b, classes)
        weights = [p.detach() for p in self.params]
        grads: list[torch.Tensor] = [None] * len(weights)  # type: ignore[list-item]
        for i in range(len(weights) - 2, -1, -2):
            layer_input = layers[i // 2]
            grads[i], grads[i + 1] = torch.bmm(grad.transpose(1, 2), layer_input, out=self._weight_grad(i)), grad.sum(1)
            if i > 0:  # through the ReLU whose output fed this layer
                grad = aten.threshold_backward(torch.bmm(grad, weights[i]), layer_input, 0)
        return losses.view(k, b), logits, grads

    def _weight_grad(self, i: int) -> torch.Tensor:
        """Layer i's weight-gradient buffer, reused every step: a fresh (K, out, in) tensor per
        step is a fresh mapping for a wide MLP (page faults), which cost more than its product."""
        weight = self.params[i]
        if i not in self._grad_buffers or self._grad_buffers[i].shape != weight.shape:
            self._grad_buffers[i] = torch.empty_like(weight, requires_grad=False)
        return self._grad_buffers[i]

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's weights as a standalone model's state_dict."""
        state = {n: p[k].detach().clone() for n, p in zip(self.names, self.params)}
        state.update({n: b[k].clone() for n, b in zip(self.buffer_names, self.buffers)})
        return state

    def keep(self, members: list[int]) -> None:
        """Drop every member not listed (finished or diverged); the rest keep their state."""
        kept = self.subset(members)
        self.params = [p.requires_grad_(True) for p in kept.params]
        self.buffers = kept.buffers

    def subset(self, members: list[int]) -> "StackedModel":
        """A stack of copies of the listed members' current weights and buffers."""
        index = torch.tensor(members, device=self.params[0].device)
        sub = copy.copy(self)
        sub._grad_buffers = {}  # its own: the buffers hold the original's gradients mid-step
        sub.params = [p.detach()[index] for p in self.params]  # indexing copies
        sub.buffers = [b[index] for b in self.buffers]
        return sub
