"""The seeds' other measures: mu_Y(F; L) against a linear classifier, and path norms."""

import itertools
import math

import numpy as np
import torch
from torch import nn

from trainables.data import TensorData
from trainables.linear_probe import conditional_mutual_information, linear_test_predictions, mu_linear, mutual_information
from trainables.measures import path_norms
from trainables.models import MLP, SmallCNN


def test_a_net_that_is_the_linear_classifier_has_mu_equal_to_its_information():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 5000)
    linear = np.where(rng.random(5000) < 0.7, y, rng.integers(0, 10, 5000))  # 70% right
    # F = L: everything F says about Y, L says too; so I(F; Y | L) = 0 and mu = I(F; Y)
    assert abs(conditional_mutual_information(linear, y, linear)) < 1e-12
    assert math.isclose(mu_linear(linear, y, linear), mutual_information(linear, y)) and mu_linear(linear, y, linear) > 1.0


def test_a_net_independent_of_the_labels_and_the_linear_classifier_has_mu_near_zero():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 10, 20000)
    linear = np.where(rng.random(20000) < 0.7, y, rng.integers(0, 10, 20000))
    independent = rng.integers(0, 10, 20000)
    assert abs(mu_linear(independent, y, linear)) < 0.03  # plug-in bias only
    # and a net that knows Y through other features than L's keeps information L lacks
    other = np.where(rng.random(20000) < 0.9, y, rng.integers(0, 10, 20000))
    assert mu_linear(other, y, linear) < mutual_information(other, y) - 0.5


def test_mutual_information_of_a_known_table():
    a = np.array([0, 0, 1, 1])
    assert math.isclose(mutual_information(a, a), math.log(2))
    assert mutual_information(a, np.array([0, 1, 0, 1])) == 0.0


def brute_force_path_norm(model: MLP, p: int) -> float:
    weights = [m.weight.detach().double() for m in model.net if isinstance(m, nn.Linear)]
    sizes = [weights[0].shape[1]] + [w.shape[0] for w in weights]
    total = 0.0
    for path in itertools.product(*(range(n) for n in sizes)):
        prod = 1.0
        for layer, w in enumerate(weights):
            prod *= abs(w[path[layer + 1], path[layer]].item()) ** p
        total += prod
    return total ** (1 / p)


def test_mlp_path_norms_sum_over_every_input_output_path():
    torch.manual_seed(0)
    model = MLP(3, 2, 4, 2)
    norms = path_norms(model, (1, 3))
    for p in (1, 2):
        assert math.isclose(norms[f"l{p}_path_norm"], brute_force_path_norm(model, p), rel_tol=1e-12)


def test_conv_path_norms_are_finite_and_scale_with_the_weights():
    torch.manual_seed(0)
    model = SmallCNN(1, 1, 10, 4, 2).eval()
    base = path_norms(model, (1, 40))
    with torch.no_grad():
        model.net[-1].weight.mul_(2.0)  # the last layer is on every path: l1 doubles, l2 doubles
    scaled = path_norms(model, (1, 40))
    assert all(math.isfinite(v) and v > 0 for v in base.values())
    assert math.isclose(scaled["l1_path_norm"], 2 * base["l1_path_norm"], rel_tol=1e-9)
    assert math.isclose(scaled["l2_path_norm"], 2 * base["l2_path_norm"], rel_tol=1e-9)


def test_the_linear_fit_is_cached_per_data_set_not_per_name(tmp_path, monkeypatch):
    # a stand-in set under a real set's name (tests, a re-generated set) must not reuse its fit
    monkeypatch.setenv("MINIMA_DATA_DIR", str(tmp_path))
    g = torch.Generator().manual_seed(0)

    def stand_in(test_rows: int) -> TensorData:
        y, y_test = torch.randint(0, 3, (60,), generator=g), torch.randint(0, 3, (test_rows,), generator=g)
        x, x_test = torch.randn(60, 1, 5, generator=g) + y[:, None, None], torch.randn(test_rows, 1, 5, generator=g)
        return TensorData(x, y, x_test + y_test[:, None, None], y_test, num_classes=3)

    small, large = stand_in(8), stand_in(20)
    assert len(linear_test_predictions("stub", small)) == 8
    assert len(linear_test_predictions("stub", large)) == 20
    assert len(list(tmp_path.glob("stub-linear-test-predictions-*.npy"))) == 2
    assert torch.equal(linear_test_predictions("stub", small), linear_test_predictions("stub", small))
