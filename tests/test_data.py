import os
import pickle

import numpy as np
import pytest

from tfresnet.data import load_dataset
from tfresnet.data.cifar import read_pickle
from tfresnet.data.splits import stratified_split
from tfresnet.errors import UserError


def no_download(*args, **kwargs):
    raise AssertionError("tests must never download")


@pytest.fixture(autouse=True)
def forbid_download(monkeypatch):
    monkeypatch.setattr("tfresnet.data.cifar.keras_get_file", no_download)


def test_cifar100_pickles_round_trip_with_fine_and_coarse_labels(cifar100_dir):
    root, info = cifar100_dir
    data = load_dataset("cifar100", data_dir=root, val_size=40, seed=3)
    train = info["train"]
    assert data.x_train.dtype == np.uint8 and data.x_train.shape[1:] == (32, 32, 3)
    assert len(data.x_train) + len(data.x_val) == train and len(data.x_val) == 40
    np.testing.assert_array_equal(data.x_test, info["x"][train:])
    np.testing.assert_array_equal(data.y_test, info["fine"][train:])
    np.testing.assert_array_equal(data.coarse_test, info["coarse"][train:])
    assert data.class_names[7] == "fine7" and data.coarse_names[19] == "coarse19"
    # Every training image keeps its own fine and coarse label through the split.
    index = {img.tobytes(): i for i, img in enumerate(info["x"][:train])}
    for images, fine, coarse in ((data.x_train, data.y_train, data.coarse_train),
                                 (data.x_val, data.y_val, data.coarse_val)):
        source = np.array([index[img.tobytes()] for img in images])
        np.testing.assert_array_equal(fine, info["fine"][source])
        np.testing.assert_array_equal(coarse, info["coarse"][source])
    np.testing.assert_array_equal(data.fine_to_coarse, np.arange(100) // 5)


def test_cifar10_pickles_round_trip(cifar10_dir):
    root, info = cifar10_dir
    data = load_dataset("cifar10", data_dir=root / "cifar-10-batches-py", val_size=0)
    np.testing.assert_array_equal(data.x_train, info["x"][:300])
    np.testing.assert_array_equal(data.y_train, info["y"][:300])
    np.testing.assert_array_equal(data.x_test, info["x"][300:])
    assert data.class_names == info["names"] and data.coarse_train is None
    assert len(data.x_val) == 0


def test_default_validation_split_is_ten_percent_and_stratified(cifar10_dir):
    root, _ = cifar10_dir
    data = load_dataset("cifar10", data_dir=root)
    assert len(data.x_val) == 30
    assert np.all(np.bincount(data.y_val, minlength=10) == 3)
    again = load_dataset("cifar10", data_dir=root)
    np.testing.assert_array_equal(data.x_val, again.x_val)


def test_stratified_split_exact_size_and_proportions():
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    kept, held = stratified_split(labels, 20, seed=1)
    assert len(held) == 20 and len(np.intersect1d(kept, held)) == 0
    assert len(kept) + len(held) == len(labels)
    assert list(np.bincount(labels[held])) == [10, 5, 3, 2]
    assert not np.array_equal(held, stratified_split(labels, 20, seed=2)[1])


class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_code(tmp_path):
    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps({b"data": Boom()}))
    with pytest.raises(UserError, match="refusing to load"):
        read_pickle(path)


def test_truncated_pickle_is_a_clear_error(cifar100_dir):
    root, _ = cifar100_dir
    path = root / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match="not a readable CIFAR pickle"):
        load_dataset("cifar100", data_dir=root)


def test_wrong_kind_of_cifar_folder_is_named(cifar10_dir):
    root, _ = cifar10_dir
    with pytest.raises(UserError, match="pass --dataset cifar10"):
        load_dataset("cifar100", data_dir=root)


def test_missing_data_without_network_says_what_to_do(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("tfresnet.data.cifar.keras_get_file", offline)
    with pytest.raises(UserError, match="place the extracted cifar-100-python/ folder"):
        load_dataset("cifar100", data_dir=tmp_path)


def test_unknown_dataset_and_bad_val_size(cifar10_dir):
    with pytest.raises(UserError, match="unknown data set 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(UserError, match="--val-size"):
        load_dataset("cifar10", data_dir=cifar10_dir[0], val_size=300)


def test_digits_demo_is_fixed_and_rgb():
    data = load_dataset("digits")
    assert data.x_train.shape[1:] == (32, 32, 3) and data.x_train.dtype == np.uint8
    assert len(data.x_test) == 360 and data.num_classes == 10
    assert np.array_equal(data.x_train[..., 0], data.x_train[..., 2])
    np.testing.assert_array_equal(data.y_test, load_dataset("digits").y_test)


def test_real_cifar10_images_load(real_cifar10):
    data = load_dataset("cifar10", data_dir=real_cifar10, val_size=50)
    assert len(data.x_train) == 450 and len(data.x_test) == 200
    assert data.class_names[0] == "airplane"
    # Real photos: per-channel statistics near CIFAR-10's published mean (125, 123, 114).
    assert all(abs(m - ref) < 20 for m, ref in zip(data.mean, (125.3, 123.0, 113.9)))
