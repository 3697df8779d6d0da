import gzip

import numpy as np
import pytest

from models.data import FASHION_MNIST_CLASSES, FMNIST_DIR_ENV, channel_stats, load_fashion_mnist, read_idx
from common.errors import UserError


@pytest.mark.parametrize("split,count", [("train", 60000), ("test", 10000)])
def test_reads_the_real_files(split, count):
    images, labels = load_fashion_mnist(split)
    assert images.shape == (count, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (count,)
    assert set(np.unique(labels)) == set(range(10))
    assert np.bincount(labels).tolist() == [count // 10] * 10  # Fashion-MNIST is balanced
    assert images.min() == 0 and images.max() == 255


def test_class_names():
    assert len(FASHION_MNIST_CLASSES) == 10
    assert FASHION_MNIST_CLASSES[0] == "T-shirt/top" and FASHION_MNIST_CLASSES[9] == "Ankle boot"


def test_channel_stats_are_the_known_fashion_mnist_values():
    images, _ = load_fashion_mnist("train")
    mean, std = channel_stats(images)
    assert mean[0] == pytest.approx(0.2860, abs=1e-4) and std[0] == pytest.approx(0.3530, abs=1e-4)


def test_missing_dataset_is_one_line_saying_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(FMNIST_DIR_ENV, str(tmp_path))
    with pytest.raises(UserError) as err:
        load_fashion_mnist("test")
    assert "\n" not in str(err.value) and "apt-get install dataset-fashion-mnist" in str(err.value)


def test_env_variable_overrides_the_path(tmp_path, monkeypatch):
    def idx(path, arr):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        with gzip.open(path, "wb") as f:
            f.write(header + arr.tobytes())

    idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.full((3, 28, 28), 7, np.uint8))
    idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 9, 4], np.uint8))
    monkeypatch.setenv(FMNIST_DIR_ENV, str(tmp_path))
    images, labels = load_fashion_mnist("test")
    assert images.shape == (3, 28, 28) and labels.tolist() == [0, 9, 4]


@pytest.mark.parametrize("payload,message", [
    (b"not an idx file at all", "not an unsigned-byte IDX"),
    (bytes([0, 0, 8, 1]) + (100).to_bytes(4, "big") + b"\x01" * 10, "truncated"),
])
def test_corrupt_idx_is_a_one_line_error(tmp_path, payload, message):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(payload)
    with pytest.raises(UserError, match=message):
        read_idx(path)
