"""Property-based bad input: uploads and checkpoint files of every odd kind end in
a clear message (BadImageError / CheckpointError) or a valid result, never a crash."""
from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import tiny_probe
from core import zoo
from core.images import UPLOAD_SIDE, load_upload
from core.errors import BadImageError, CheckpointError, UnknownModelError

MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LA", "PA", "I", "I;16", "F", "HSV"]
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO"]
FUZZ = settings(max_examples=int(os.environ.get("RL_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def check_upload(blob: bytes) -> None:
    try:
        out = load_upload(blob)
    except BadImageError as e:
        assert str(e)  # a message a person can read
        return
    assert out.shape[0] == out.shape[1] <= UPLOAD_SIDE and out.shape[2] == 3
    assert out.dtype == np.uint8


@st.composite
def images(draw):
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(FORMATS))
    w, h = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    base = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    try:
        img = base.convert(mode) if mode not in ("I;16", "F", "I") else Image.fromarray(
            rng.integers(0, 60000, (h, w)).astype({"I;16": np.uint16, "F": np.float32,
                                                   "I": np.int32}[mode]))
        buf = io.BytesIO()
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        return b""  # Pillow cannot write this mode in this format: an empty upload
    blob = buf.getvalue()
    cut = draw(st.sampled_from([None, None, 0.5, 0.9, 0.1]))
    if cut is not None:
        blob = blob[: max(1, int(len(blob) * cut))]
    flips = draw(st.lists(st.integers(0, max(0, len(blob) - 1)), max_size=3))
    arr = bytearray(blob)
    for i in flips:
        arr[i] ^= 0xFF
    return bytes(arr)


@FUZZ
@given(images())
def test_uploads_of_any_mode_format_size_and_damage(blob):
    check_upload(blob)


@FUZZ
@given(st.binary(max_size=4096))
def test_uploads_of_random_bytes(blob):
    check_upload(blob)


@settings(max_examples=20, deadline=None)
@given(st.integers(20_000, 200_000), st.integers(20_000, 200_000))
def test_uploads_claiming_huge_dimensions(w, h):
    from helpers import png_claiming
    with pytest.raises(BadImageError):
            load_upload(png_claiming(w, h))


# ---------------------------------------------------------------- checkpoints

PROBE = tiny_probe(width=4)
STATE = PROBE.model.state_dict()


def check_checkpoint(blob: bytes, suffix: str = ".pt") -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"ckpt{suffix}"
        path.write_bytes(blob)
        try:
            probe = zoo.load(path, device="cpu")
        except (CheckpointError, UnknownModelError) as e:
            assert str(e)
            return
        with torch.no_grad():
            assert probe(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@FUZZ
@given(st.binary(max_size=8192), st.sampled_from([".pt", ".pth", ".safetensors", ".ckpt"]))
def test_checkpoints_of_random_bytes(blob, suffix):
    check_checkpoint(blob, suffix)


@FUZZ
@given(st.data())
def test_checkpoints_with_wrong_shapes_missing_and_extra_keys(data_):
    sd = dict(STATE)
    keys = list(sd)
    for k in data_.draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
        action = data_.draw(st.sampled_from(["drop", "reshape", "dtype", "rename"]))
        if action == "drop":
            sd.pop(k)
        elif action == "reshape" and sd[k].numel() > 1:
            sd[k] = sd[k].flatten()[: sd[k].numel() - 1]
        elif action == "dtype":
            sd[k] = sd[k].to(torch.int32)
        elif action == "rename":
            sd[k + ".x"] = sd.pop(k)
    wrapper = data_.draw(st.sampled_from(["plain", "state_dict", "model", "list"]))
    obj = {"plain": sd, "state_dict": {"state_dict": sd}, "model": {"model": sd},
           "list": list(sd.values())}[wrapper]
    check_checkpoint(_saved(obj))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


@FUZZ
@given(how=st.sampled_from(["torch", "pickle2", "pickle4"]), nested=st.booleans())
def test_checkpoints_holding_code_never_run_it(how, nested):
    marker = Path(tempfile.mkdtemp()) / "ran.txt"
    obj = {"state_dict": _Evil(str(marker))} if nested else _Evil(str(marker))
    blob = _saved(obj) if how == "torch" else pickle.dumps(obj, protocol=2 if how == "pickle2" else 4)
    check_checkpoint(blob)
    assert not marker.exists(), "loading without trust executed code"


@FUZZ
@given(st.integers(1, 2000))
def test_truncated_real_checkpoints(cut):
    blob = _saved(STATE)
    check_checkpoint(blob[: min(cut * 37, len(blob) - 1)])


def test_zip_bombs_and_odd_zips(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\0" * 5_000_000)
    check_checkpoint(buf.getvalue())
