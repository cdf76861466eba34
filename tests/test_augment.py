import torch

import pytest

from trainables.augment import (apply, augment, cutout, draw, drawn_serially, gather_shifted, random_crop, roll_rows,
                                random_flip, random_shift_1d)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_shift_is_a_circular_shift_of_each_signal():
    x = torch.randn(64, 1, 40)
    out = random_shift_1d(x, 2, gen())
    assert out.shape == x.shape
    shifts = set()
    for a, b in zip(x, out):
        match = [s for s in range(-2, 3) if torch.equal(torch.roll(a, s, -1), b)]
        assert len(match) == 1
        shifts.add(match[0])
    assert shifts == {-2, -1, 0, 1, 2}  # 64 draws cover every offset


@pytest.mark.parametrize("shape", [(7, 3, 40), (5, 11), (0, 1, 40)])
def test_shift_rolls_every_signal_of_a_row_by_that_rows_shift(shape):
    x = torch.randn(shape)
    shift = torch.arange(shape[0]) % 7 - 3  # beyond +-2 too: any offset, either way
    expected = torch.stack([torch.roll(a, int(s), -1) for a, s in zip(x, shift)]) if shape[0] else x
    assert torch.equal(roll_rows(x, shift), expected)
    rows = torch.randint(0, max(shape[0], 1), (2 * shape[0],))  # rows repeated, in any order: a pack's epoch
    assert torch.equal(gather_shifted(x, rows, shift.repeat(2)), roll_rows(x[rows], shift.repeat(2)))


def test_flip_and_crop_keep_shape_and_move_content():
    x = torch.rand(128, 3, 32, 32) + 1.0  # strictly positive, so padding shows as zeros
    flipped = random_flip(x, gen())
    n_flipped = sum(torch.equal(f, a.flip(-1)) for f, a in zip(flipped, x))
    assert 30 < n_flipped < 98
    cropped = random_crop(x, 4, gen())
    assert cropped.shape == x.shape
    zero_rows = (cropped == 0).flatten(1).any(1)
    assert 0.5 < zero_rows.float().mean() < 1.0  # most crops show some padding, offset 0,0 shows none


def test_cutout_zeroes_a_square_of_the_given_size():
    x = torch.ones(256, 3, 32, 32)
    out = cutout(x, 8, gen())
    zeros = (out[:, 0] == 0).flatten(1).sum(1)
    assert zeros.max() == 64  # squares fully inside the image
    assert zeros.min() >= 16  # a corner-centred square keeps a quarter
    assert torch.equal(out[:, 0] == 0, out[:, 2] == 0)  # same square on every channel


def test_augment_adds_noise_of_the_requested_std_and_is_reproducible():
    x = torch.zeros(512, 1, 40)
    out = augment(x, "none", 0.05, gen(1))
    assert abs(out.std().item() - 0.05) < 0.002
    assert torch.equal(out, augment(x, "none", 0.05, gen(1)))
    img = torch.rand(8, 3, 28, 28)
    assert augment(img, "flip_crop_cutout", 0.0, gen()).shape == img.shape


@pytest.mark.parametrize("kind, shape", [("shift", (16, 1, 40)), ("flip_crop", (16, 3, 12, 12)),
                                         ("flip_crop_cutout", (16, 3, 12, 12))])
def test_joined_batches_get_exactly_what_each_gets_alone(kind, shape):
    """How a pack augments its members: each draws from its own generator, one pass for all."""
    batches = [torch.randn(shape) for _ in range(3)]
    alone = [augment(x, kind, 0.1, gen(i)) for i, x in enumerate(batches)]
    draws = [draw(x, kind, 0.1, gen(i)) for i, x in enumerate(batches)]
    joined = apply(torch.cat(batches), kind, {k: torch.cat([d[k] for d in draws]) for k in draws[0]})
    assert torch.equal(joined, torch.cat(alone))


@pytest.mark.parametrize("kind", ["none", "shift"])
def test_what_is_drawn_serially_draws_a_whole_epoch_as_its_batches_in_turn(kind):
    """How a pack draws an epoch's augmentation at once (trainables.stacked_step): only where the
    draws for N rows are exactly the draws for its consecutive batches, generator state included."""
    assert drawn_serially(kind, 0.0, torch.device("cpu"))
    x = torch.randn(1000, 1, 40)
    whole, parts = gen(5), gen(5)
    epoch = draw(x, kind, 0.0, whole)
    for batch in (64, 100, 999):
        steps = [draw(x[i : i + batch], kind, 0.0, parts) for i in range(0, len(x), batch)]
        assert epoch.keys() == {k for step in steps for k in step}
        assert all(torch.equal(epoch[k], torch.cat([step[k] for step in steps])) for k in epoch)
        assert torch.equal(whole.get_state(), parts.get_state())
        epoch = draw(x, kind, 0.0, whole)


def test_only_single_integer_draws_on_a_cpu_are_drawn_serially():
    cpu = torch.device("cpu")
    assert drawn_serially("shift", 0.0, cpu) and drawn_serially("none", 0.0, cpu)
    assert not drawn_serially("shift", 0.1, cpu)  # CPU Gaussian noise is filled 16 values at a time
    assert not drawn_serially("flip_crop", 0.0, cpu)  # three draws per batch, interleaved
    assert not drawn_serially("shift", 0.0, torch.device("cuda"))
