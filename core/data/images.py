"""Images: conversion between their forms, resizing, identity (a hash), uploads.

Two forms travel through core: uint8 HWC arrays (what files, the gallery and
the shipped samples hold) and float CHW tensors in [0, 1] (what models take).
An image's identity in result keys is a hash of its uint8 pixels, so the same
picture has the same key whichever form it came in.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from core.errors import BadImageError

MAX_UPLOAD_BYTES = 20 * 2**20
MAX_UPLOAD_PIXELS = 50_000_000     # refuse decompression bombs before decoding
MIN_UPLOAD_SIDE = 16               # px: below it an image is a few blurred blocks to any model
UPLOAD_PREFIX = "upload-"
UPLOAD_SIDE = 1024  # px: uploads are kept as their centre square, at most this large


# ------------------------------------------------------------------ forms

def to_uint8(img: Any) -> np.ndarray:
    """An image as HWC uint8: from a CHW float tensor/array in [0, 1], an HWC uint8
    array, or integer pixel values 0..255 (e.g. nested lists from JSON)."""
    a = img.detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)  # CHW -> HWC
    if np.issubdtype(a.dtype, np.integer):
        if a.size and (a.min() < 0 or a.max() > 255):   # a cast would wrap 300 to 44
            raise BadImageError(f"pixel values must be 0..255, not {a.min()}..{a.max()}")
        return a.astype(np.uint8, copy=False)
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)


def to_tensor(img: Any) -> torch.Tensor:
    """An image (any form to_uint8 takes) as a (3, H, W) float tensor in [0, 1]."""
    return torch.from_numpy(to_uint8(img).transpose(2, 0, 1).copy()).float() / 255


def image_id(img: Any) -> str:
    """A short hash of an image's uint8 pixels: its identity in result keys."""
    return hashlib.sha256(to_uint8(img).tobytes()).hexdigest()[:16]


def norms(batch: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each item of a batch (at least 1e-12), shaped to broadcast
    against it: (N, 1, 1, 1) for images."""
    return batch.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (batch.ndim - 1)))


# ------------------------------------------------------------------ resizing

def to_model_size(im: Image.Image, size: int = 32) -> np.ndarray:
    """Any Pillow image -> uint8 RGB size x size, centre crop then resize."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    elif im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        im = Image.fromarray(arr.astype(np.uint8))
    im = ImageOps.fit(im.convert("RGB"), (size, size), Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8)


STANDARD_CROP = 0.875   # ImageNet's usual evaluation: shorter side to 256, centre 224

_INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                   "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


@dataclass(frozen=True)
class Preprocessing:
    """How a photo of a data set becomes a model's input, as the model's authors
    evaluate it: the shorter side resized to `resize` (both sides with squash; the
    longer side with a border colour; None: not resized), then the centre size x size
    (padded where smaller, as torchvision's CenterCrop does: in black, or in the border
    colour, as timm's crop_mode "border" does), with this interpolation."""
    size: int
    resize: int | None = None
    interpolation: str = "bilinear"
    squash: bool = False
    border: tuple[int, int, int] | None = None

    @classmethod
    def standard(cls, size: int) -> "Preprocessing":
        """The shorter side to size / 0.875, then the centre (256 and 224)."""
        return cls(size, round(size / STANDARD_CROP))

    @classmethod
    def of(cls, spec: dict | None, size: int) -> "Preprocessing":
        """From a model card's `evaluation_transform` (standard where it has none)."""
        if not spec:
            return cls.standard(size)
        border = spec.get("border")   # a list once the card went through JSON
        return cls(**{**spec, "border": tuple(border) if border else None})

    def describe(self) -> str:
        """What result keys call it."""
        how = ("not resized" if self.resize is None else
               f"longer side to {self.resize}, bordered in {list(self.border)}" if self.border
               else f"{'both sides' if self.squash else 'shorter side'} to {self.resize}")
        return f"{how}, centre {self.size}, {self.interpolation}"

    def apply(self, im: Image.Image) -> np.ndarray:
        """A photo as the model's input: uint8 RGB size x size (as the libraries read
        a data set: no EXIF rotation)."""
        im = im.convert("RGB")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}")
        if self.resize is not None:
            w, h = im.size
            if self.squash:
                shape = (self.resize, self.resize)
            elif self.border:     # as timm's ResizeKeepRatio(longest=1): the longer side
                ratio = max(w, h) / self.resize
                shape = (round(w / ratio), round(h / ratio))
            else:                 # as torchvision's Resize(n): the shorter side n
                shape = ((self.resize, int(self.resize * h / w)) if w <= h else
                         (int(self.resize * w / h), self.resize))
            im = im.resize(shape, _INTERPOLATIONS[self.interpolation])
        w, h = im.size
        if w < self.size or h < self.size:     # torchvision's CenterCrop pads, then crops
            pad_w, pad_h = max(self.size - w, 0), max(self.size - h, 0)
            canvas = Image.new("RGB", (w + pad_w, h + pad_h), self.border or (0, 0, 0))
            canvas.paste(im, (pad_w // 2, pad_h // 2))
            im, (w, h) = canvas, canvas.size
        left, top = round((w - self.size) / 2), round((h - self.size) / 2)
        return np.asarray(im.crop((left, top, left + self.size, top + self.size)), dtype=np.uint8)


def fit(img: Any, size: int) -> np.ndarray:
    """An image (any form to_uint8 takes) at size x size: unchanged if it already is,
    else centre-cropped and resized (how every page hands one image to models of
    different input sizes)."""
    a = to_uint8(img)
    if a.shape[0] == a.shape[1] == size:
        return a
    return to_model_size(Image.fromarray(a), size)


# ------------------------------------------------------------------ uploads

def load_upload(data: bytes) -> np.ndarray:
    """Decode an uploaded image (any format Pillow reads) to its centre square, uint8
    RGB, at its own resolution up to UPLOAD_SIDE: each model then sees it through
    `fit` at its own input size, from the photo, not from another model's size.

    Raises BadImageError for anything that is not a readable, sane image.
    """
    if not data:
        raise BadImageError("the file is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise BadImageError(f"the file is {len(data) / 2**20:.1f} MB; the limit is "
                            f"{MAX_UPLOAD_BYTES // 2**20} MB")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > MAX_UPLOAD_PIXELS:
                raise BadImageError(f"the image is {w}x{h} pixels; the limit is "
                                    f"{MAX_UPLOAD_PIXELS // 1_000_000} megapixels")
            if min(w, h) < MIN_UPLOAD_SIDE:
                raise BadImageError(f"the image is {w}x{h} pixels; a model needs at least "
                                    f"{MIN_UPLOAD_SIDE} pixels a side")
            im.load()
            return to_model_size(im, min(w, h, UPLOAD_SIDE))
    except BadImageError:
        raise
    except Image.DecompressionBombError as e:
        raise BadImageError("the image would decompress to too many pixels "
                            f"(the limit is {MAX_UPLOAD_PIXELS // 1_000_000} megapixels)") from e
    except MemoryError as e:
        raise BadImageError("the image is too large to decode") from e
    except Exception as e:  # noqa: BLE001 - any decoder failure on an upload is "unreadable"
        raise BadImageError("this is not an image Pillow can read (PNG, JPEG, GIF, BMP, TIFF, "
                            "WebP and most other formats are), or the file is damaged") from e
