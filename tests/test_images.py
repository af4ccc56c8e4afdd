"""Images: the two forms and their conversions, identity hashes, per-image norms,
and uploads good and bad (decoded, kept, found again by key)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import png_claiming

from core import data, images
from core.errors import BadImageError

RNG = np.random.default_rng(0)


def test_forms_convert_both_ways_and_keep_their_identity():
    hwc = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    chw = images.to_tensor(hwc)
    assert chw.shape == (3, 32, 32) and chw.dtype == torch.float32
    assert 0 <= chw.min() <= chw.max() <= 1
    assert np.array_equal(images.to_uint8(chw), hwc)
    assert np.array_equal(images.to_uint8(chw.numpy()), hwc)
    # nested lists of pixel values (plain data, e.g. a job spec read from JSON)
    assert np.array_equal(images.to_uint8(hwc.tolist()), hwc)
    ident = images.image_id(hwc)
    assert len(ident) == 16 and images.image_id(chw) == ident == images.image_id(hwc.tolist())
    assert images.image_id(255 - hwc) != ident
    sample = data.cifar_samples()[0]
    assert torch.equal(sample.tensor(), images.to_tensor(sample.image))


def test_per_image_norms_broadcast_and_never_vanish():
    batch = torch.zeros(3, 3, 4, 4)
    batch[1] = 2.0
    n = images.norms(batch)
    assert n.shape == (3, 1, 1, 1)
    assert n[0].item() == pytest.approx(1e-12) and n[1].item() == pytest.approx(2.0 * 48 ** 0.5)
    assert images.norms(torch.ones(2, 5)).shape == (2, 1)


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
    out = images.load_upload(_png(img, fmt))
    assert out.shape == (50, 50, 3) and out.dtype == np.uint8


def test_upload_formats_and_sizes():
    img = Image.fromarray(RNG.integers(0, 255, (1000, 400, 3), dtype=np.uint8))
    for fmt in ("JPEG", "WEBP", "BMP", "GIF"):
        assert images.load_upload(_png(img, fmt)).shape == (400, 400, 3)
    assert images.load_upload(_png(Image.new("RGB", (16, 40)))).shape == (16, 16, 3)
    with pytest.raises(BadImageError, match="1x1 pixels; a model needs at least 16"):
        images.load_upload(_png(Image.new("RGB", (1, 1))))
    big = Image.fromarray(RNG.integers(0, 255, (1500, 2000, 3), dtype=np.uint8))
    assert images.load_upload(_png(big)).shape == (images.UPLOAD_SIDE, images.UPLOAD_SIDE, 3)


def test_each_model_sees_an_upload_from_the_photo_at_its_own_size():
    """A 299 px model gets the photo scaled down to 299, not a 224 px copy scaled up."""
    yy, xx = np.mgrid[0:400, 0:600]
    photo = Image.fromarray(np.stack([(xx * 7 + yy * 3) % 256, (xx ^ yy) % 256,
                                      (xx * yy) % 256], -1).astype(np.uint8))
    kept = images.load_upload(_png(photo))
    for size in (299, 224, 64):
        direct = images.to_model_size(photo, size).astype(float)
        assert np.abs(images.fit(kept, size).astype(float) - direct).mean() < 3, size


def test_bad_uploads():
    with pytest.raises(BadImageError, match="empty"):
        images.load_upload(b"")
    with pytest.raises(BadImageError, match="not an image Pillow can read") as bad:
        images.load_upload(b"hello, I am a text file" * 10)
    assert "<" not in str(bad.value) and "0x" not in str(bad.value)   # no Python internals
    good = _png(Image.fromarray(RNG.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(BadImageError):
        images.load_upload(good[: len(good) // 2])
    with pytest.raises(BadImageError, match="MB"):
        images.load_upload(b"\0" * (images.MAX_UPLOAD_BYTES + 1))


def test_decompression_bomb_refused_before_decoding():
    with pytest.raises(BadImageError, match="pixels"):
        images.load_upload(png_claiming(100_000, 100_000))
