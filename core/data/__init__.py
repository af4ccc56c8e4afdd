"""Image sources (CIFAR-10, shipped samples, out-of-distribution photos) and
`batches`, the one way core reads any of them.

CIFAR-10 is read from the official python batches (torchvision.datasets.CIFAR10)
or from any ImageFolder tree, decoded once into a cached uint8 tensor: every
later use is a memory map away. Images are float tensors in [0, 1], CHW.

The data sets are stored class by class, so reading them in order gives
class-sorted batches: every estimate (CKA, accuracy, stitching fits) reads
seeded random batches instead, and only passes whose answer is in the data
set's order (representations, test outputs) ask for that order.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import pickle
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
from PIL import Image

from core import PROJECT
from core.errors import BadImageError, DataNotFoundError, UnlabelledDataError
from core.data.images import Preprocessing, to_model_size, to_tensor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)   # the robustness library's CIFAR-10 constants
STD = (0.2023, 0.1994, 0.2010)
GET_DATA_HINT = (
    "Get the full CIFAR-10 test set with `python -m core data --download` (internet, "
    "torchvision's official batches) or `python -m core data --from PATH` (a "
    "cifar-10-batches-py folder, an ImageFolder tree or a .tar.gz of one), or set "
    "ROBUSTLENS_DATA to such a folder.")


def cache_dir() -> Path:
    """Where derived files (decoded tensors, results store, checkpoints) live."""
    path = Path(os.environ.get("ROBUSTLENS_CACHE", Path.home() / ".cache" / "robustlens"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- CIFAR-10

class ImageTensorDataset(torch.utils.data.Dataset):
    """uint8 NCHW images (three channels, or one: grey) + int64 labels; items are
    (float CHW in [0,1], label)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, source: str = "") -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError("images must be a uint8 tensor of shape (N, 3, H, W) or "
                             "(N, 1, H, W)")
        self.images, self.labels, self.source = images, labels.long(), source
        self._digest: str | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def identity(self) -> dict:
        """What results call it: its source, size and a hash of its images and labels
        (two subsets of one size from one source are different data)."""
        if self._digest is None:
            h = hashlib.sha256(self.images.contiguous().numpy().data)
            h.update(self.labels.contiguous().numpy().data)
            self._digest = h.hexdigest()[:16]
        return {"source": self.source, "n": len(self), "sha256": self._digest}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i].float() / 255, int(self.labels[i])

    def subset(self, indices: Iterable[int]) -> "ImageTensorDataset":
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return ImageTensorDataset(self.images[idx], self.labels[idx], self.source)


def shuffled_orders(n: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """The seeded random orders of n items, draw after draw of one generator."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randperm(n, generator=gen)


def shuffled_order(n: int, seed: int = 0, epoch: int = 0) -> torch.Tensor:
    """The seeded random order of n items; epoch k is the (k+1)-th draw of one
    generator, so that every epoch of a training loop has its own order."""
    return next(itertools.islice(shuffled_orders(n, seed), epoch, None))


def fixed_subset(ds: ImageTensorDataset, n: int, seed: int = 0) -> ImageTensorDataset:
    """The first n images of a fixed shuffle (the data are stored class by class):
    the images, in order, that batches(ds, ..., shuffle_seed=seed, limit=n) reads."""
    return ds.subset(shuffled_order(len(ds), seed)[:n].tolist())


# --------------------------------------------------------------------------- batches

Take = Callable[[Any], tuple[torch.Tensor, torch.Tensor]]  # slice or index tensor -> (x, y)


def _positions(i: slice | torch.Tensor, n: int) -> list[int]:
    return list(range(n)[i]) if isinstance(i, slice) else i.tolist()


def _indexed(source: Any) -> tuple[int, Take] | None:
    """(size, indices -> (x, y)) for a source read by index; None for an iterable
    of batches, whose order and batching are its own."""
    if isinstance(source, ImageTensorDataset):
        return len(source), lambda i: (source.images[i], source.labels[i])
    if torch.is_tensor(source):
        return source.shape[0], lambda i: (source[i], torch.full(
            (len(_positions(i, source.shape[0])),), -1, dtype=torch.long))
    if isinstance(source, (list, tuple)) and source and isinstance(source[0], Sample):
        def samples(i: Any) -> tuple[torch.Tensor, torch.Tensor]:
            picked = [source[k] for k in _positions(i, len(source))]
            return (torch.stack([s.tensor() for s in picked]),
                    torch.tensor([-1 if s.label is None else s.label for s in picked]))
        return len(source), samples
    if isinstance(source, torch.utils.data.Dataset) and hasattr(source, "__len__") and \
            not isinstance(source, torch.utils.data.IterableDataset):
        def items(i: Any) -> tuple[torch.Tensor, torch.Tensor]:
            picked = [source[k] for k in _positions(i, len(source))]
            return (torch.stack([torch.as_tensor(p[0]) for p in picked]),
                    torch.as_tensor([int(p[1]) for p in picked]))
        return len(source), items
    return None


def _to_input(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    x = x.to(device)
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def batches(source: Any, batch_size: int, device: torch.device | str = "cpu",
            shuffle_seed: int | None = 0, limit: int | None = None,
            epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x float in [0, 1], y) batches of `source` on `device`: how core reads data.

    A source read by index (an ImageTensorDataset, a (N, 3, H, W) tensor, a list
    of Sample, a map-style Dataset of (x, y)) is read in the seeded random order
    shuffled_order(N, shuffle_seed, epoch), or in its own order with
    shuffle_seed=None (for answers given in that order); limit keeps the first
    `limit` images of the order, so that a limit below N reads the images of
    fixed_subset(source, limit, shuffle_seed). Any other iterable of (x, y) or x
    batches is read as it comes, cut after `limit` images. Unlabelled images
    have the label -1.
    """
    _check_batch_size(batch_size)
    indexed = _indexed(source)
    if indexed is None:
        yield from _as_they_come(source, device, limit)
        return
    n, take = indexed
    count = n if limit is None else min(n, limit)
    order = None if shuffle_seed is None else shuffled_order(n, shuffle_seed, epoch)[:count]
    for s in range(0, count, batch_size):
        x, y = take(slice(s, min(s + batch_size, count)) if order is None
                    else order[s:s + batch_size])
        yield _to_input(x, device), y.to(device)


def _as_they_come(source: Iterable, device: torch.device | str,
                  limit: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    left = limit
    if left is not None and left <= 0:
        return
    for item in source:
        x, y = (item[0], item[1]) if isinstance(item, (list, tuple)) else (
            item, torch.full((len(item),), -1, dtype=torch.long))
        if left is not None:
            x, y = x[:left], y[:left]
            left -= len(y)
        yield _to_input(torch.as_tensor(x), device), torch.as_tensor(y).to(device)
        if left is not None and left <= 0:
            return


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, not {batch_size}")


def require_labels(y: torch.Tensor, what: str) -> None:
    """Refuse unlabelled images (label -1, as `batches` gives them) where `what`
    needs each image's label."""
    if bool((y < 0).any()):
        raise UnlabelledDataError(f"{what} needs each image's label, and these images have "
                                  "none: pass (image, label) pairs or a labelled data set")


def batch_sizes(source: Any, batch_size: int, limit: int | None = None) -> list[int] | None:
    """The sizes of the batches `batches` yields for these arguments; None when
    they cannot be known before reading (a one-shot iterator)."""
    _check_batch_size(batch_size)
    indexed = _indexed(source)
    if indexed is not None:
        count = indexed[0] if limit is None else min(indexed[0], limit)
        return [min(batch_size, count - s) for s in range(0, count, batch_size)]
    if isinstance(source, (list, tuple)):
        sizes = [len(b[0] if isinstance(b, (list, tuple)) else b) for b in source]
    elif isinstance(source, torch.utils.data.DataLoader) and source.batch_size:
        full, rest = divmod(len(source.dataset), source.batch_size)
        sizes = [source.batch_size] * full + ([rest] if rest and not source.drop_last else [])
    else:
        return None
    if limit is None:
        return sizes
    out, left = [], limit
    for size in sizes:
        if left <= 0:
            break
        out.append(min(size, left))
        left -= out[-1]
    return out


def _candidate_roots() -> list[Path]:
    roots = []
    if os.environ.get("ROBUSTLENS_DATA"):
        roots.append(Path(os.environ["ROBUSTLENS_DATA"]).expanduser())
    roots += [cache_dir() / "data", Path.home() / ".cache" / "robustlens" / "data"]
    return roots


def _split_dir(root: Path, split: str) -> tuple[str, Path] | None:
    """Recognise what `root` holds for `split`: ('batches', dir) or ('folder', dir)."""
    for cand in (root, root / "cifar-10-batches-py"):
        # torchvision reads the batches from <parent>/cifar-10-batches-py only
        if cand.name == "cifar-10-batches-py" and (cand / "test_batch").is_file():
            return "batches", cand
    for base in (root, root / "cifar10-jpeg", root / "cifar10"):
        if (base / split).is_dir() and any((base / split).iterdir()):
            return "folder", base / split
    return None


def locate_cifar10(split: str = "test", root: str | os.PathLike | None = None) -> tuple[str, Path]:
    """Find CIFAR-10 for `split`; raise DataNotFoundError with how to get it."""
    if split not in ("train", "test"):
        raise ValueError("split must be 'train' or 'test'")
    roots = [Path(root).expanduser()] if root is not None else _candidate_roots()
    for r in roots:
        if r.suffixes[-2:] == [".tar", ".gz"] and r.is_file():
            r = extract_archive(r)
        if r.is_dir():
            found = _split_dir(r, split)
            if found:
                return found
    where = ", ".join(str(r) for r in roots)
    raise DataNotFoundError(f"CIFAR-10 ({split}) not found in {where}. {GET_DATA_HINT}")


def has_cifar10(split: str = "test") -> bool:
    try:
        locate_cifar10(split)
        return True
    except DataNotFoundError:
        return False


def extract_archive(archive: Path, dest: Path | None = None) -> Path:
    """Extract a .tar.gz of CIFAR-10 once (safely: no paths outside dest)."""
    dest = dest or cache_dir() / "data"
    marker = dest / f".extracted-{archive.name}"
    if not marker.exists():
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
        marker.touch()
    return dest


CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"   # torchvision's checksum of that file


def can_download(host: str = "www.cs.toronto.edu", timeout: float = 2.0) -> bool:
    """Whether this machine reaches the CIFAR-10 server (a TCP connection, nothing sent)."""
    import socket
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def download_cifar10(root: Path | None = None,
                     progress: Callable[[int, int], None] | None = None) -> Path:
    """Download the official python batches (163 MB) where torchvision looks for them,
    reporting progress(bytes done, bytes total), then let torchvision check and
    extract them. Raises DataNotFoundError with one sentence when it cannot."""
    import urllib.error
    import urllib.request

    import torchvision
    root = Path(root or cache_dir() / "data")
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "cifar-10-python.tar.gz"
    if not archive.exists() or hashlib.md5(archive.read_bytes()).hexdigest() != CIFAR10_MD5:
        part = archive.with_suffix(".part")
        try:
            with urllib.request.urlopen(CIFAR10_URL, timeout=30) as r, open(part, "wb") as f:
                total, done = int(r.headers.get("Content-Length") or 0), 0
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
        except (urllib.error.URLError, OSError) as e:
            part.unlink(missing_ok=True)
            reason = getattr(e, "reason", None) or e
            raise DataNotFoundError(
                f"Could not download CIFAR-10 from {CIFAR10_URL} ({reason}). On a machine "
                "without internet, copy the data set here with `python -m core data --from "
                "PATH`.") from e
        if hashlib.md5(part.read_bytes()).hexdigest() != CIFAR10_MD5:
            part.unlink(missing_ok=True)
            raise DataNotFoundError("The CIFAR-10 download arrived damaged (checksum "
                                    "mismatch); try again.")
        os.replace(part, archive)
    try:
        torchvision.datasets.CIFAR10(str(root), train=False, download=True)
        torchvision.datasets.CIFAR10(str(root), train=True, download=True)
    except (RuntimeError, OSError) as e:
        raise DataNotFoundError(f"The CIFAR-10 archive in {root} could not be unpacked ({e}).") from e
    return root


IMAGENET_SYNSETS = PROJECT / "assets" / "imagenet_synsets.txt"


@functools.cache
def imagenet_synsets() -> dict[str, int]:
    """ImageNet's WordNet ids (n01440764, ...) -> class index (their sorted order)."""
    return {w: i for i, w in enumerate(IMAGENET_SYNSETS.read_text().split())}


def named_by_synset(classes: list[str]) -> bool:
    """Whether class folders are ImageNet synsets (then labelled by ImageNet's index)."""
    return bool(classes) and all(c in imagenet_synsets() for c in classes)


@dataclass(frozen=True)
class FolderListing:
    """The images of an ImageFolder tree, class by class, with what identifies them."""
    files: list[str]                     # paths
    labels: list[int]
    classes: list[str]
    stats: list[tuple[str, int, int]]    # each file's CLASS/NAME, size and change time


def _suffix(name: str) -> str:
    """A file name's suffix as pathlib gives it (none for '.hidden' or 'name.')."""
    dot = name.rfind(".")
    return name[dot:] if 0 < dot < len(name) - 1 else ""


def _is_dir(entry: os.DirEntry) -> bool:
    """Whether an entry is a folder, following links; False for one that cannot be
    followed (as pathlib's is_dir says)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def folder_files(root: Path) -> FolderListing:
    """The images of an ImageFolder tree (ROOT/CLASS/IMAGE): class by class in sorted
    order, files sorted within a class. Folders named by ImageNet synset are labelled
    with that class's index (also in a folder of a few classes); any other folders by
    their sorted position. One pass of os.scandir: a page lists its folder on every
    click, and an ImageNet validation folder holds 50,000 files."""
    classes = sorted(e.name for e in os.scandir(root) if _is_dir(e))
    index = ({c: imagenet_synsets()[c] for c in classes} if named_by_synset(classes)
             else {c: i for i, c in enumerate(classes)})
    listing = FolderListing([], [], classes, [])
    for cls in classes:
        for entry in sorted(os.scandir(root / cls), key=lambda e: e.name):
            if _suffix(entry.name).lower() in IMAGE_SUFFIXES:
                try:
                    st = entry.stat()
                except OSError as e:
                    raise DataNotFoundError(f"{entry.path} cannot be read ({e.strerror}; a "
                                            "broken link?)") from e
                listing.files.append(entry.path)
                listing.labels.append(index[cls])
                listing.stats.append((f"{cls}/{entry.name}", st.st_size, st.st_mtime_ns))
    return listing


def _decode_folder(listing: FolderListing, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    if not listing.files:
        raise DataNotFoundError(f"{root} holds no images in class folders (CLASS/IMAGE.png)")
    images = []
    for f in listing.files:
        with _open_image(f) as im:
            images.append(np.asarray(im.convert("RGB").resize((32, 32))))
    arr = np.stack(images).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(arr)), torch.tensor(listing.labels)


def _open_image(path: str) -> Image.Image:
    """An image file of a data set, or BadImageError naming the file to mend."""
    try:
        im = Image.open(path)
        im.load()
        return im
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise BadImageError(f"{path} is not a readable image (damaged, or not an image): "
                            "remove or replace it") from e


class ImageFolder(torch.utils.data.Dataset):
    """An ImageFolder tree (an ImageNet validation folder: one folder per class) read as
    a stream at one input size, through a model's evaluation transform (an int: the
    standard one at that size): each image is decoded when it is asked for, so a data
    set of any size never sits in memory. Items: (float CHW in [0, 1], label)."""

    def __init__(self, root: str | os.PathLike, preprocessing: Preprocessing | int) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataNotFoundError(f"there is no folder {root} on this server")
        self._listing = folder_files(self.root)
        self.files, self.classes = self._listing.files, self._listing.classes
        if not self.files:
            raise DataNotFoundError(f"{root} holds no images in class folders "
                                    "(ROOT/CLASS/IMAGE.jpg, as an ImageNet validation folder)")
        self.preprocessing = (preprocessing if isinstance(preprocessing, Preprocessing)
                              else Preprocessing.standard(preprocessing))
        self.labels, self.size = torch.tensor(self._listing.labels), self.preprocessing.size
        self.by_synset = named_by_synset(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with _open_image(self.files[i]) as im:
            return to_tensor(self.preprocessing.apply(im)), int(self.labels[i])

    def identity(self) -> dict:
        """What result keys call it: a hash of its files' names and bytes (remembered
        in the cache folder while no file changes), its size, the crop and how its
        folders become labels."""
        return {"folder_sha256": _folder_digest(self.root, self._listing), "images": len(self),
                "size": self.size, "crop": self.preprocessing.describe(),
                "labels": "ImageNet's synset indices" if self.by_synset else "sorted folders"}


def _folder_digest(root: Path, listing: FolderListing) -> str:
    stamp = hashlib.sha256(json.dumps([str(root.resolve()), listing.stats]).encode()).hexdigest()
    memo = cache_dir() / "folders" / f"{stamp}.sha256"
    if memo.is_file():
        return memo.read_text().strip()
    h = hashlib.sha256()
    for f, (name, _, _) in zip(listing.files, listing.stats):
        h.update(name.encode() + b"\0")
        with open(f, "rb") as file:
            h.update(file.read())
    memo.parent.mkdir(parents=True, exist_ok=True)
    partial = memo.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")
    partial.write_text(h.hexdigest())
    os.replace(partial, memo)     # a reader sees the whole hash or none
    return h.hexdigest()


def _decode_batches(batch_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision
    try:
        ds = torchvision.datasets.CIFAR10(str(batch_dir.parent), train=split == "train",
                                          download=False)
    except (RuntimeError, OSError, KeyError, pickle.UnpicklingError) as e:
        raise DataNotFoundError(f"the CIFAR-10 batches in {batch_dir} are incomplete or "
                                f"corrupt ({e}). {GET_DATA_HINT}") from e
    # canonical order: class by class, official order within a class (a stable
    # sort), which is also the order of an ImageFolder tree of the same files
    labels = torch.tensor(ds.targets)
    order = torch.sort(labels, stable=True).indices
    arr = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))
    return torch.from_numpy(arr)[order].contiguous(), labels[order]


_PROVIDED: dict[str, tuple[ImageTensorDataset, str | None]] = {}


def provide(split: str, dataset: ImageTensorDataset, source: str | None = None) -> None:
    """Serve cifar10(split) from `dataset` in this process, cifar10_source(split) being
    `source`: a sweep's Ray worker gets the driver's copy from the object store instead
    of a disk that may not have it."""
    _PROVIDED[split] = (dataset, source)


# The files (names and sizes) of the JPEG copy of CIFAR-10 in the project's shared data,
# on which the shipped results were computed: with the official batches, CIFAR-10 itself
REFERENCE_SOURCES = {"test": "b96286d530f5b042", "train": "b1ffa057baf7aa87"}
_source_digests: dict[tuple, str] = {}


def cifar10_source(split: str = "test") -> str | None:
    """How job keys tell this machine's CIFAR-10 `split` apart: None for CIFAR-10
    itself (the official batches, or the JPEG copy whose results ship; also where there
    is no data set, so nothing can be computed), else "folder:" and a digest of the
    folder's file names and sizes (another copy: a corrupted CIFAR-10-C, an edited
    folder). Listing 50,000 files takes a second, so a digest is kept while the
    folders' times stay as they were."""
    if split in _PROVIDED:
        return _PROVIDED[split][1]
    try:
        kind, path = locate_cifar10(split)
    except DataNotFoundError:
        return None
    if kind == "batches":
        return None
    folders = [path] + [Path(e.path) for e in os.scandir(path) if _is_dir(e)]
    seen = (str(path), tuple(f.stat().st_mtime_ns for f in folders))
    if seen not in _source_digests:
        files = [(name, size) for name, size, _ in folder_files(path).stats]
        _source_digests[seen] = hashlib.sha1(json.dumps(files).encode()).hexdigest()[:16]
    digest = _source_digests[seen]
    return None if digest == REFERENCE_SOURCES[split] else f"folder:{digest}"


def cifar10(split: str = "test", root: str | os.PathLike | None = None) -> ImageTensorDataset:
    """CIFAR-10 as an ImageTensorDataset, decoded once and cached as uint8."""
    if root is None and split in _PROVIDED:
        return _PROVIDED[split][0]
    kind, path = locate_cifar10(split, root)
    # the decoded copy is named by every file's name, size and time: a file changed
    # inside a class folder leaves the split folder's own time as it was
    listing = folder_files(path) if kind == "folder" else None
    stats = listing.stats if listing else sorted(
        (e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(path) if e.is_file())
    key = hashlib.sha1(json.dumps([kind, str(path.resolve()), split, stats]).encode()).hexdigest()[:16]
    cached = cache_dir() / "tensors" / f"cifar10-{split}-{key}.pt"
    if cached.exists():
        blob = torch.load(cached, weights_only=True)
        return ImageTensorDataset(blob["images"], blob["labels"], f"{kind}:{path}")
    images, labels = _decode_batches(path, split) if kind == "batches" else _decode_folder(listing, path)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    torch.save({"images": images, "labels": labels}, tmp)
    os.replace(tmp, cached)
    return ImageTensorDataset(images, labels, f"{kind}:{path}")


# --------------------------------------------------------------------------- samples

@dataclass(frozen=True)
class Sample:
    """An image the app can show without a data set: uint8 HWC RGB at its native size
    (32x32 CIFAR-10, 224x224 ImageNet), `label` in its data set's classes."""
    key: str
    title: str
    image: np.ndarray
    label: int | None
    source: str

    def tensor(self) -> torch.Tensor:
        return to_tensor(self.image)


def _foolbox_folder() -> Path:
    try:
        import foolbox
    except ImportError as e:  # pragma: no cover - foolbox is in requirements.txt
        raise DataNotFoundError("the foolbox package (which ships 20 labelled CIFAR-10 and "
                                "ImageNet images) is not installed: pip install foolbox") from e
    return Path(foolbox.__file__).parent / "data"


def cifar_samples() -> list[Sample]:
    """The 20 lossless, labelled CIFAR-10 test images that foolbox ships."""
    out = []
    for f in sorted(_foolbox_folder().glob("cifar10_*_*.png")):
        _, idx, label = f.stem.split("_")
        with Image.open(f) as im:
            img = np.asarray(im.convert("RGB"))
        out.append(Sample(f"foolbox-{idx}", f"{CLASSES[int(label)]} #{int(idx)}", img,
                          int(label), "CIFAR-10 test image shipped by foolbox"))
    return out


def imagenet_samples() -> list[Sample]:
    """The 20 labelled ImageNet validation images (224x224) that foolbox ships."""
    names = imagenet_classes()
    out = []
    for f in sorted(_foolbox_folder().glob("imagenet_*_*.jpg")):
        _, idx, label = f.stem.split("_")
        with Image.open(f) as im:
            img = to_model_size(im, 224)
        out.append(Sample(f"imagenet-{idx}", f"{names[int(label)]} #{int(idx)}", img,
                          int(label), "ImageNet validation image shipped by foolbox"))
    return out


def samples(kind: str) -> list[Sample]:
    """The labelled sample images of a data set kind ('cifar10' or 'imagenet'); none
    for other kinds."""
    return {"cifar10": cifar_samples, "imagenet": imagenet_samples}.get(kind, list)()


# --------------------------------------------------------------------------- classes

def imagenet_classes() -> tuple[str, ...]:
    """The 1,000 ImageNet class names, as torchvision ships them (no download)."""
    from torchvision.models import ResNet50_Weights
    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


KIND_NAMES = {"cifar10": "CIFAR-10", "imagenet": "ImageNet", "other": "other"}


def kind_of(num_classes: int, input_size: int) -> str:
    """The data set a classifier was made for, from its outputs and input size:
    'cifar10', 'imagenet', or 'other'."""
    if num_classes == 10 and input_size <= 64:
        return "cifar10"
    if num_classes == 1000:
        return "imagenet"
    return "other"


def class_names(kind: str, num_classes: int) -> tuple[str, ...]:
    """Names of a classifier's outputs: CIFAR-10's or ImageNet's, else 'class k'."""
    if kind == "cifar10":
        return CLASSES
    if kind == "imagenet":
        return imagenet_classes()
    return tuple(f"class {k}" for k in range(num_classes))


# name in skimage.data -> (title, closest CIFAR-10 class or None)
_PHOTOS = {
    "chelsea": ("cat (Chelsea)", 3),
    "astronaut": ("astronaut", None),
    "coffee": ("coffee cup", None),
    "rocket": ("rocket", None),
    "motorcycle_left": ("motorcycle", None),
    "hubble_deep_field": ("Hubble deep field", None),
}


def ood_photos(size: int = 32) -> list[Sample]:
    """Real photos bundled with scikit-image, centre-cropped to size x size (their
    label is the closest CIFAR-10 class, at CIFAR-10's size only)."""
    import skimage.data
    folder = Path(skimage.data.__file__).parent
    out = []
    for name, (title, label) in _PHOTOS.items():
        files = list(folder.glob(f"{name}.*"))
        if not files:
            continue
        with Image.open(files[0]) as im:
            img = to_model_size(im, size)
        out.append(Sample(f"photo-{name}", title, img, label if size == 32 else None,
                          "photo bundled with scikit-image (out of distribution)"))
    return out


# ------------------------------------------------------------- gallery keys

def image_for(key: str, uploads: Mapping[str, np.ndarray] | None = None, size: int = 32
              ) -> tuple[np.ndarray, str, int | None] | None:
    """An image by its gallery key: (uint8 HWC, title, label) or None. Photos are cut
    at `size` (a model's input size); the others come at their own size, and the
    jobs fit them to each model's.

    Uploads exist only in the session that made them: pass that session's
    {key: image} as `uploads`."""
    pools = {"foolbox-": cifar_samples, "imagenet-": imagenet_samples,
             "photo-": lambda: ood_photos(size)}
    prefix = next((p for p in pools if key.startswith(p)), None)
    if prefix is not None:
        s = next((s for s in pools[prefix]() if s.key == key), None)
        return (s.image, s.title, s.label) if s else None
    if key.startswith("test-"):
        try:
            test = cifar10("test")
            i = int(key.split("-", 1)[1])
        except (DataNotFoundError, ValueError):
            return None
        if 0 <= i < len(test):
            label = int(test.labels[i])
            return (test.images[i].numpy().transpose(1, 2, 0),
                    f"test image {i}: {CLASSES[label]}", label)
    if key.startswith("upload-") and uploads and key in uploads:
        return uploads[key], "your image", None
    return None
