import pytest
import torch

from trainables.label_noise import make_pretrain_set


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 1.0])
def test_exactly_the_noisy_fraction_is_redrawn(fraction):
    y = torch.arange(1000) % 10
    x = torch.randn(1000, 1, 40)
    _, labels = make_pretrain_set(x, y, 10, fraction, 1, 0.0, torch.Generator().manual_seed(0))
    changed = (labels != y).float().mean().item()
    # redrawn labels land on the true class about 1/10 of the time
    assert abs(changed - 0.9 * fraction) < 0.04
    if fraction == 0.0:
        assert torch.equal(labels, y)


def test_copies_have_their_own_labels_and_zeroed_inputs():
    y = torch.arange(500) % 10
    x = torch.randn(500, 1, 40)
    xs, ys = make_pretrain_set(x, y, 10, 1.0, 3, 0.25, torch.Generator().manual_seed(0))
    assert xs.shape == (1500, 1, 40) and ys.shape == (1500,)
    first, second = ys[:500], ys[500:1000]
    assert (first != second).float().mean() > 0.8
    zeroed = (xs == 0).float().mean().item()
    assert abs(zeroed - 0.25) < 0.01
    assert not torch.equal(xs[:500], xs[500:1000])
