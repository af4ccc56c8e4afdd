"""Image sources: CIFAR-10 in both formats, samples, photos, and uploads good and bad."""
from __future__ import annotations

import io
import pickle
import struct
import tarfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import needs_data
from core import data
from core.errors import BadImageError, DataNotFoundError

RNG = np.random.default_rng(0)


def _write_folder(root, per_class=3, split="test"):
    for c, cls in enumerate(data.CLASSES):
        d = root / split / cls
        d.mkdir(parents=True)
        for i in range(per_class):
            arr = np.full((32, 32, 3), c * 20 + i, dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{i:04d}.png")


def test_imagefolder_tree_is_decoded_once_and_cached(tmp_path):
    _write_folder(tmp_path / "tree")
    ds = data.cifar10("test", tmp_path / "tree")
    assert len(ds) == 30 and ds.images.dtype == torch.uint8
    x, y = ds[4]
    assert x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1 and y == 1
    assert ds.labels.tolist() == sorted(ds.labels.tolist())
    cached = list((data.cache_dir() / "tensors").glob("cifar10-test-*.pt"))
    assert cached
    again = data.cifar10("test", tmp_path / "tree")
    assert torch.equal(again.images, ds.images)


def test_official_batches_through_torchvision(tmp_path, monkeypatch):
    """Batches in the official pickle layout, where torchvision.datasets.CIFAR10 looks."""
    import torchvision
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    labels = [3, 1, 3, 0, 1, 9]
    imgs = RNG.integers(0, 255, (6, 3072), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as f:
        # Python 2 pickles: keys are native strings, read back with latin1
        pickle.dump({"data": imgs, "labels": labels, "batch_label": "testing batch 1 of 1"},
                    f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(data.CLASSES)}, f, protocol=2)
    # our fake files cannot carry the official md5 sums
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    ds = data.cifar10("test", tmp_path)
    assert ds.labels.tolist() == sorted(labels)  # canonical order: by class, stable
    # label 0 comes from row 3; the two 1s keep their official order (rows 1, 4)
    first = imgs[3].reshape(3, 32, 32)
    assert np.array_equal(ds.images[0].numpy(), first)
    assert np.array_equal(ds.images[1].numpy(), imgs[1].reshape(3, 32, 32))
    assert np.array_equal(ds.images[2].numpy(), imgs[4].reshape(3, 32, 32))


def test_tarball_is_extracted(tmp_path, monkeypatch):
    _write_folder(tmp_path / "src" / "cifar10-jpeg")
    archive = tmp_path / "c.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar10-jpeg", arcname="cifar10-jpeg")
    monkeypatch.setenv("ROBUSTLENS_CACHE", str(tmp_path / "cache"))
    ds = data.cifar10("test", archive)
    assert len(ds) == 30


def test_absent_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLENS_DATA", str(tmp_path / "nothing"))
    with pytest.raises(DataNotFoundError, match="python -m core data --download"):
        data.cifar10("test", tmp_path / "nothing")
    with pytest.raises(ValueError):
        data.locate_cifar10("validation")


@needs_data
def test_real_test_set_when_present():
    ds = data.cifar10("test")
    assert len(ds) == 10_000 and torch.bincount(ds.labels).tolist() == [1000] * 10
    sub = data.fixed_subset(ds, 200)
    assert len(sub) == 200 and len(set(sub.labels.tolist())) == 10


def test_shipped_cifar_samples():
    s = data.cifar_samples()
    assert len(s) == 20 and all(x.image.shape == (32, 32, 3) for x in s)
    assert all(x.label is not None and 0 <= x.label < 10 for x in s)
    assert s[0].tensor().shape == (3, 32, 32)


def test_ood_photos():
    p = data.ood_photos()
    assert len(p) >= 4 and all(x.image.shape == (32, 32, 3) and x.image.dtype == np.uint8 for x in p)


# ---------------------------------------------------------------------- uploads

def _png(img: Image.Image, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK", "I;16", "LA", "1", "F"])
def test_upload_modes(mode):
    arr = RNG.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode if mode not in ("I;16", "F") else "L")
    if mode == "I;16":
        img = Image.fromarray((RNG.integers(0, 65535, (50, 70))).astype(np.uint16))
    if mode == "F":
        img = Image.fromarray(RNG.random((50, 70)).astype(np.float32))
    fmt = "TIFF" if mode in ("CMYK", "F") else "PNG"
    out = data.load_upload(_png(img, fmt))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_upload_formats_and_sizes():
    img = Image.fromarray(RNG.integers(0, 255, (1000, 400, 3), dtype=np.uint8))
    for fmt in ("JPEG", "WEBP", "BMP", "GIF"):
        assert data.load_upload(_png(img, fmt)).shape == (32, 32, 3)
    assert data.load_upload(_png(Image.new("RGB", (1, 1)))).shape == (32, 32, 3)


def test_bad_uploads():
    with pytest.raises(BadImageError, match="empty"):
        data.load_upload(b"")
    with pytest.raises(BadImageError, match="not an image Pillow can read") as bad:
        data.load_upload(b"hello, I am a text file" * 10)
    assert "<" not in str(bad.value) and "0x" not in str(bad.value)   # no Python internals
    good = _png(Image.fromarray(RNG.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(BadImageError):
        data.load_upload(good[: len(good) // 2])
    with pytest.raises(BadImageError, match="MB"):
        data.load_upload(b"\0" * (data.MAX_UPLOAD_BYTES + 1))


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims a gigantic image (a decompression bomb)."""
    def chunk(tag, payload):
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(
            ">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 100)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_before_decoding():
    with pytest.raises(BadImageError, match="pixels"):
        data.load_upload(_png_claiming(100_000, 100_000))
