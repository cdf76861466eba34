"""Datasets as whole tensors on the training device.

Small-image and 1-D datasets fit in device memory, so batches are index gathers, not a
DataLoader. Loaded sets are kept per process so a Ray actor reused across trials loads once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# torchvision class name and per-channel statistics for normalisation.
_TORCHVISION = {
    "cifar10": ("CIFAR10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("CIFAR100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ("SVHN", (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "mnist": ("MNIST", (0.1307,), (0.3081,)),
    "fashion_mnist": ("FashionMNIST", (0.2860,), (0.3530,)),
}
NUM_CLASSES = {"mnist1d": 10, "digits": 10, "cifar10": 10, "cifar100": 100, "svhn": 10, "mnist": 10, "fashion_mnist": 10}

_LOADED: dict[tuple[str, str], "TensorData"] = {}


class DatasetUnavailable(RuntimeError):
    """The dataset is neither on disk nor downloadable; the message says where to put it."""


@dataclass(frozen=True)
class TensorData:
    """Train and test sets as float inputs (N, C, *spatial) and int64 labels, on one device."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def data_dir() -> Path:
    """Where datasets are cached or downloaded: $MINIMA_DATA_DIR, else ~/.cache/minima/data.

    Set MINIMA_NO_DOWNLOAD=1 where the data is staged in advance and nothing may be fetched.
    """
    root = os.environ.get("MINIMA_DATA_DIR") or Path.home() / ".cache" / "minima" / "data"
    return Path(root)


def load_dataset(name: str, device: torch.device | str = "cpu") -> TensorData:
    """The named dataset on `device`, loaded once per process."""
    key = (name, str(device))
    if key not in _LOADED:
        embedded = {"mnist1d": _load_mnist1d, "digits": _load_digits}
        arrays = embedded[name]() if name in embedded else load_torchvision(name)
        _LOADED[key] = TensorData(
            *(torch.as_tensor(a).to(device) for a in arrays), num_classes=NUM_CLASSES[name]
        )
    return _LOADED[key]


def _load_mnist1d() -> tuple[np.ndarray, ...]:
    """Generate mnist1d locally (never its download path) and cache the arrays on disk."""
    path = data_dir() / "mnist1d" / "mnist1d_default.npz"
    if not path.exists():
        from filelock import FileLock

        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if not path.exists():
                from mnist1d.data import get_dataset_args, make_dataset

                d = make_dataset(get_dataset_args())
                tmp = path.with_suffix(".tmp.npz")
                np.savez(tmp, x=d["x"], y=d["y"], x_test=d["x_test"], y_test=d["y_test"])
                tmp.replace(path)  # atomic: concurrent trials never read a half-written file
    with np.load(path) as d:
        x, y, xt, yt = d["x"], d["y"], d["x_test"], d["y_test"]
    as_input = lambda a: a.astype(np.float32)[:, None, :]  # (N, 1, 40): one channel
    return as_input(x), y.astype(np.int64), as_input(xt), yt.astype(np.int64)


DIGITS_TEST_PER_CLASS = 36  # 360 test images (36 per class), the other 1,437 train


def digits_split(y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The fixed train/test split of scikit-learn's 1,797 digits (labels `y`, loaded when not
    given), as sorted row indices: 36 test images per class (360), drawn with NumPy's legacy
    RandomState(0), whose stream NumPy keeps unchanged across versions; the other 1,437 train
    (138 to 147 per class)."""
    if y is None:
        from sklearn.datasets import load_digits

        y = load_digits().target
    rng = np.random.RandomState(0)
    test = np.sort(np.concatenate(
        [rng.permutation(np.flatnonzero(y == c))[:DIGITS_TEST_PER_CLASS] for c in range(NUM_CLASSES["digits"])]))
    return np.setdiff1d(np.arange(len(y)), test), test


def _load_digits() -> tuple[np.ndarray, ...]:
    """scikit-learn's handwritten digits (8x8, shipped inside scikit-learn: nothing is
    downloaded) on `digits_split`: pixels 0..16 scaled to [0, 1], then normalised with the
    train set's mean and std (one channel, so one of each), shaped (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    train, test = digits_split(d.target)
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8)
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    y = d.target.astype(np.int64)
    return x[train], y[train], x[test], y[test]


def load_torchvision(name: str) -> tuple[np.ndarray, ...]:
    """Download (once, under a file lock) and normalise a torchvision dataset."""
    import torchvision.datasets as tvd
    from filelock import FileLock

    cls_name, mean, std = _TORCHVISION[name]
    root = data_dir() / name
    root.mkdir(parents=True, exist_ok=True)
    cls = getattr(tvd, cls_name)
    download = os.environ.get("MINIMA_NO_DOWNLOAD", "") in ("", "0")  # 1 on nodes with pre-staged data
    try:
        with FileLock(str(root / ".download.lock")):
            if name == "svhn":
                train, test = cls(root, split="train", download=download), cls(root, split="test", download=download)
            else:
                train, test = cls(root, train=True, download=download), cls(root, train=False, download=download)
    except Exception as err:  # torchvision raises URLError, RuntimeError or OSError offline
        raise DatasetUnavailable(
            f"dataset {name!r} is not in {root} and could not be downloaded ({type(err).__name__}: {err}). "
            f"Download it on a machine with internet into that folder (or set MINIMA_DATA_DIR to a "
            f"folder that has it); offline, use dataset=mnist1d or digits."
        ) from None
    x_tr, y_tr = _images_and_labels(train)
    x_te, y_te = _images_and_labels(test)
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    return (x_tr - m) / s, y_tr, (x_te - m) / s, y_te


def _images_and_labels(ds) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) floats in [0, 1] and int64 labels from any of the torchvision sets we use."""
    x = np.asarray(ds.data)
    if x.ndim == 3:  # MNIST-like: (N, H, W)
        x = x[:, None]
    elif x.shape[-1] == 3:  # CIFAR: (N, H, W, C); SVHN is already (N, C, H, W)
        x = x.transpose(0, 3, 1, 2)
    labels = ds.labels if hasattr(ds, "labels") else ds.targets
    return x.astype(np.float32) / 255.0, np.asarray(labels, dtype=np.int64)
