"""The pack's class-major log-softmax gives ATen's row-by-row bits, or is not used."""

import pytest
import torch
from torch import nn

from trainables import class_major

aten = torch.ops.aten


@pytest.mark.parametrize("classes", [2, 10, 16, 100])
@pytest.mark.parametrize("rows", [1, 63, 64, 65, 1536])
def test_log_softmax_and_its_gradient_equal_atens_bit_for_bit(classes, rows):
    gen = torch.Generator().manual_seed(classes * 1000 + rows)
    for scale in (1e-2, 1.0, 50.0):
        logits = torch.randn(rows, classes, generator=gen) * scale
        grad = torch.randn(rows, classes, generator=gen)
        out, by_class = class_major.log_softmax_forward(logits)
        expected = torch.log_softmax(logits, 1)
        assert torch.equal(out, expected) and out.is_contiguous()
        assert (by_class is not None) == class_major.agrees(classes, torch.float32)
        got = class_major.log_softmax_backward(grad, out, by_class)
        assert torch.equal(got, aten._log_softmax_backward_data(grad, expected, 1, torch.float32))
        target = torch.randint(0, classes, (rows,), generator=gen)
        for reduction in ("none", "sum", "mean"):
            assert torch.equal(class_major.cross_entropy(logits, target, reduction),
                               nn.functional.cross_entropy(logits, target, reduction=reduction))


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != "AVX512", reason="lane count differs")
def test_used_while_the_classes_fit_in_one_avx512_vector():
    assert class_major.agrees(10, torch.float32)
    assert class_major.agrees(15, torch.float32)
    assert not class_major.agrees(16, torch.float32)
    assert class_major.applies(torch.zeros(4, 10))


def test_not_used_on_other_dtypes_or_shapes():
    assert not class_major.applies(torch.zeros(4, 10, dtype=torch.bfloat16))
    assert not class_major.applies(torch.zeros(2, 4, 10))
    out, by_class = class_major.log_softmax_forward(torch.zeros(4, 10, dtype=torch.bfloat16))
    assert by_class is None and out.dtype == torch.bfloat16
