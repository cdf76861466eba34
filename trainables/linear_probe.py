"""How much of a net's behaviour a linear classifier explains (Nakkiran et al. 2019).

mu_Y(F; L) = I(F; Y) - I(F; Y | L): the information the net's predictions F carry about the
label Y that the linear classifier's predictions L also carry. Early in training SGD learns
functions a linear classifier explains (mu near I(F; Y)); later, more complex ones. Plug-in
estimates from the joint counts on the test set, in nats.

The linear classifier is a logistic regression on the flattened training inputs, fit once per
data set and cached (its test predictions) next to the data under the set's fingerprint, so
every trial compares to the same L.
"""

from __future__ import annotations

import numpy as np
import torch

from .data import TensorData, data_dir

_CACHE: dict[tuple, torch.Tensor] = {}


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Plug-in I(A; B) in nats from paired integer labels."""
    _, a_idx = np.unique(a, return_inverse=True)
    _, b_idx = np.unique(b, return_inverse=True)
    joint = np.zeros((a_idx.max() + 1, b_idx.max() + 1))
    np.add.at(joint, (a_idx, b_idx), 1)
    joint /= joint.sum()
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / outer[nz])).sum())


def conditional_mutual_information(a: np.ndarray, b: np.ndarray, given: np.ndarray) -> float:
    """Plug-in I(A; B | C) = sum_c p(c) I(A; B | C = c)."""
    total = 0.0
    for c in np.unique(given):
        rows = given == c
        total += float(rows.mean()) * mutual_information(a[rows], b[rows])
    return total


def mu_linear(f: np.ndarray, y: np.ndarray, linear: np.ndarray) -> float:
    """mu_Y(F; L) = I(F; Y) - I(F; Y | L)."""
    return float(mutual_information(f, y) - conditional_mutual_information(f, y, linear))  # a plain float: checkpoints


def data_fingerprint(data: TensorData) -> str:
    """Which data a cached fit belongs to: its sizes, labels and first rows. Two sets under one
    name (a stand-in in tests, a re-downloaded or re-generated set) never share a cached fit."""
    import hashlib

    digest = hashlib.sha1()
    for t in (data.y_train, data.y_test, data.x_train[:16], data.x_test[:16]):
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def linear_test_predictions(dataset: str, data: TensorData) -> torch.Tensor:
    """The logistic regression's predictions on the test set (fit on the train set, cached)."""
    key = (dataset, data_fingerprint(data))  # under a millisecond: labels and 32 rows
    if key in _CACHE:
        return _CACHE[key]
    path = data_dir() / f"{dataset}-linear-test-predictions-{key[1]}.npy"
    if path.exists():
        predicted = np.load(path)
    else:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        x_train = data.x_train.flatten(1).cpu().double().numpy()
        scaler = StandardScaler().fit(x_train)
        classifier = LogisticRegression(max_iter=1000).fit(scaler.transform(x_train), data.y_train.cpu().numpy())
        predicted = classifier.predict(scaler.transform(data.x_test.flatten(1).cpu().double().numpy()))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{np.random.randint(1 << 30)}.tmp.npy")
        np.save(tmp, predicted)
        tmp.replace(path)  # concurrent trials may both fit; the results are identical
    _CACHE[key] = torch.as_tensor(predicted)
    return _CACHE[key]
