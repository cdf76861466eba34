"""The stacked MLP's hand-written backward gives each member exactly autograd's gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.models import MLP
from trainables.stacked import StackedModel


@pytest.fixture
def one_thread():
    """Trials train on one thread (`torch_threads`); on more, a GEMM may split its sums."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("depth,batch", [(0, 64), (1, 100), (2, 64), (3, 2), (2, 37)])
def test_mlp_gradients_equal_each_standalone_models_autograd(depth, batch, one_thread):
    torch.manual_seed(depth * 1000 + batch)
    models = [MLP(40, 10, width=24, depth=depth) for _ in range(3)]
    x = torch.randn(3, batch, 1, 40) * 2
    y = torch.randint(0, 10, (3, batch))
    losses, logits, grads = StackedModel(models).losses_and_grads(x, y)
    for k, model in enumerate(models):
        alone_logits = model(x[k])
        alone = nn.functional.cross_entropy(alone_logits, y[k])
        alone_grads = torch.autograd.grad(alone, list(model.parameters()))
        assert torch.equal(logits[k], alone_logits.detach())
        assert torch.equal(losses[k], nn.functional.cross_entropy(alone_logits, y[k], reduction="none").detach())
        for stacked, reference in zip(grads, alone_grads):
            assert torch.equal(stacked[k], reference)
