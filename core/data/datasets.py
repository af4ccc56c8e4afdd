"""The stitching paper's other data sets: SVHN, CIFAR-100, MNIST and Fashion-MNIST.

Each lives in the cache folder (data/<name>) in the layout torchvision's own download
leaves, so `python -m core data --set NAME --download` fetches it with torchvision
(internet; torchvision checks the files) and `--from FOLDER` copies such a folder on a
machine without internet. The files are read here, not by torchvision, so that any copy
in that layout reads (torchvision also insists on the original files' checksums).

Every set is served as 32 px uint8 images, as the paper's code prepares them: MNIST and
Fashion-MNIST resized from 28 px, with one channel. "One input size" between a front
and an end model therefore means one image size (32 x 32): a one-channel model sees a
colour image's grey level, a three-channel model a grey image in all three channels
(core.models.probe), so a front of either kind reads the images its own data set has.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from core.data import ImageTensorDataset, cache_dir, cifar10, cifar10_source, extract_archive
from core.errors import DataNotFoundError

SIZE = 32   # every set at the paper's 32 px


@dataclass(frozen=True)
class DataSet:
    name: str
    title: str
    classes: int
    channels: int
    files: dict[str, tuple[str, ...]]     # split -> files in its folder, torchvision's layout
    read: Callable[[Path, str], tuple[np.ndarray, np.ndarray]]   # -> (N, C, H, W) uint8, labels
    download: Callable[[Path], None]


def _read_svhn(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat   # a MATLAB file: data only, nothing runs
    mat = loadmat(root / f"{split}_32x32.mat")
    labels = mat["y"].astype(np.int64).ravel()
    labels[labels == 10] = 0      # SVHN writes the digit 0 as 10
    return np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1)), labels


class _ArraysOnly(pickle.Unpickler):
    """CIFAR-100's files are pickles: load numpy arrays and plain data, run nothing else."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not data: refused")
        return super().find_class(module, name)


def _read_cifar100(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with open(root / "cifar-100-python" / split, "rb") as f:
        batch = _ArraysOnly(f, encoding="latin1").load()
    images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return images, np.asarray(batch["fine_labels"], dtype=np.int64)


def _present(path: Path) -> Path:
    """The file, or its gzipped copy where only that is there (MNIST's raw files)."""
    zipped = Path(str(path) + ".gz")
    return zipped if not path.exists() and zipped.exists() else path


def _idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzipped or not."""
    path = _present(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape).copy()


def _mnist_reader(folder: str) -> Callable[[Path, str], tuple[np.ndarray, np.ndarray]]:
    def read(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        prefix = "train" if split == "train" else "t10k"
        raw = root / folder / "raw"
        images = _idx(raw / f"{prefix}-images-idx3-ubyte")[:, None]
        return images, _idx(raw / f"{prefix}-labels-idx1-ubyte").astype(np.int64)
    return read


def _torchvision(cls: str, **splits: dict) -> Callable[[Path], None]:
    def download(root: Path) -> None:
        import torchvision
        for kwargs in splits.values():
            getattr(torchvision.datasets, cls)(str(root), download=True, **kwargs)
    return download


def _mnist_files(folder: str) -> dict[str, tuple[str, ...]]:
    return {split: tuple(f"{folder}/raw/{prefix}-{part}-idx{n}-ubyte"
                         for part, n in (("images", 3), ("labels", 1)))
            for split, prefix in (("train", "train"), ("test", "t10k"))}


DATA_SETS: dict[str, DataSet] = {d.name: d for d in (
    DataSet("svhn", "SVHN", 10, 3, {"train": ("train_32x32.mat",), "test": ("test_32x32.mat",)},
            _read_svhn, _torchvision("SVHN", train={"split": "train"}, test={"split": "test"})),
    DataSet("cifar100", "CIFAR-100", 100, 3, {"train": ("cifar-100-python/train",),
                                              "test": ("cifar-100-python/test",)},
            _read_cifar100, _torchvision("CIFAR100", train={"train": True},
                                         test={"train": False})),
    DataSet("mnist", "MNIST", 10, 1, _mnist_files("MNIST"), _mnist_reader("MNIST"),
            _torchvision("MNIST", train={"train": True}, test={"train": False})),
    DataSet("fashion-mnist", "Fashion-MNIST", 10, 1, _mnist_files("FashionMNIST"),
            _mnist_reader("FashionMNIST"),
            _torchvision("FashionMNIST", train={"train": True}, test={"train": False})),
)}
NAMES = ("cifar10", *DATA_SETS)   # CIFAR-10 is core.data's own


def _known(name: str) -> None:
    if name not in NAMES:
        raise DataNotFoundError(f"there is no data set {name!r}; the data sets are "
                                f"{', '.join(NAMES)}")


def folder(name: str) -> Path:
    """Where a data set lives: the cache folder's data/<name>."""
    return cache_dir() / "data" / name


def _hint(name: str) -> str:
    return (f"Get {DATA_SETS[name].title} with `python -m core data --set {name} --download` "
            f"(internet) or `python -m core data --set {name} --from FOLDER` (a folder in "
            "the layout torchvision's download leaves).")


def _files(name: str, split: str) -> list[Path]:
    root, wanted = folder(name), DATA_SETS[name].files[split]
    found = []
    for f in wanted:
        path = _present(root / f)
        if not path.exists():
            raise DataNotFoundError(f"{DATA_SETS[name].title}'s {split} split is not here "
                                    f"({root / f} is missing). {_hint(name)}")
        found.append(path)
    return found


def identity(name: str, split: str) -> dict:
    """How results name a data set's split without reading it: its name, and for
    CIFAR-10's copies and the other sets a digest of its files' names and sizes."""
    _known(name)
    if name == "cifar10":
        source = cifar10_source(split)
        return {"data_set": name, "split": split, **({"source": source} if source else {})}
    files = [(p.name, p.stat().st_size) for p in _files(name, split)]
    return {"data_set": name, "split": split,
            "files": hashlib.sha1(json.dumps(files).encode()).hexdigest()[:16]}


def _resized(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.shape[-1] == SIZE and x.shape[-2] == SIZE:
        return x
    # the paper's transforms.Resize(32): bilinear, rounded back to 8 bits
    return F.interpolate(x.float(), size=(SIZE, SIZE), mode="bilinear", antialias=True,
                         align_corners=False).round().clamp(0, 255).to(torch.uint8)


def load(name: str, split: str = "test") -> ImageTensorDataset:
    """A data set's split as 32 px uint8 images (one channel for MNIST-like sets),
    decoded once and cached as tensors."""
    _known(name)
    if name == "cifar10":
        return cifar10(split)
    ident = identity(name, split)
    cached = cache_dir() / "tensors" / f"{name}-{split}-{ident['files']}.pt"
    source = f"{name}:{split}"
    if cached.exists():
        blob = torch.load(cached, weights_only=True)
        return ImageTensorDataset(blob["images"], blob["labels"], source)
    try:
        images, labels = DATA_SETS[name].read(folder(name), split)
    except (OSError, ValueError, KeyError, IndexError, pickle.UnpicklingError) as e:
        raise DataNotFoundError(f"{DATA_SETS[name].title}'s {split} files in {folder(name)} "
                                f"could not be read ({e}). {_hint(name)}") from e
    x, y = _resized(images), torch.from_numpy(np.asarray(labels, dtype=np.int64))
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    torch.save({"images": x, "labels": y}, tmp)
    os.replace(tmp, cached)
    return ImageTensorDataset(x, y, source)


def classes(name: str) -> int:
    _known(name)
    return 10 if name == "cifar10" else DATA_SETS[name].classes


def fetch(name: str, source: Path | None = None) -> dict:
    """Download a data set with torchvision (source None), or copy it from a folder in
    torchvision's layout (or a .tar.gz of one), into the cache; then read both splits.
    Returns {split: {"images", "source"}}."""
    _known(name)
    if name == "cifar10":
        raise DataNotFoundError("CIFAR-10 is fetched by `python -m core data --download` "
                                "or `--from PATH`")
    dest = folder(name)
    if source is None:
        try:
            DATA_SETS[name].download(dest)
        except (RuntimeError, OSError) as e:
            why = " ".join(str(e).split())   # torchvision's reasons span lines
            raise DataNotFoundError(f"Could not download {DATA_SETS[name].title} ({why}). On a "
                                    f"machine without internet: `python -m core data --set "
                                    f"{name} --from FOLDER`.") from e
    elif source.is_file():
        extract_archive(source, dest)
    elif not source.is_dir():
        raise DataNotFoundError(f"{source} does not exist")
    else:
        shutil.copytree(source, dest, dirs_exist_ok=True)
    return {split: {"images": len(ds), "source": ds.source}
            for split in ("train", "test") for ds in [load(name, split)]}
