"""A pack's per-member losses round exactly as each member's own cross_entropy call."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.loss_sums import cascade_sums


@pytest.mark.parametrize("batch", [1, 2, 16, 17, 64, 100, 256, 257, 300, 4097])
def test_cascade_sums_equal_cross_entropy_bit_for_bit(batch):
    gen = torch.Generator().manual_seed(batch)
    for scale in (0.1, 3.0, 40.0):  # near-uniform to confident logits: many exponents
        logits = torch.randn(5, batch, 10, generator=gen) * scale
        targets = torch.randint(0, 10, (5, batch), generator=gen)
        per_sample = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        sums = cascade_sums(per_sample.view(5, batch))
        alone = [nn.functional.cross_entropy(logits[k], targets[k], reduction=r) for r in ("sum", "mean")
                 for k in range(5)]
        assert torch.equal(sums, torch.stack(alone[:5]))
        assert torch.equal(sums / batch, torch.stack(alone[5:]))


def test_a_plain_row_sum_would_not_be_exact():
    """Why the cascade exists: summing in another order changes the last bits."""
    gen = torch.Generator().manual_seed(0)
    values = torch.rand(200, 64, generator=gen) * 5
    assert not torch.equal(values.sum(1), cascade_sums(values))
