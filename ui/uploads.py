"""Uploads that belong to one browser session: images (kept in the session, never
on disk) and checkpoints (a private folder of the session's own). Nothing one
person uploads is listed, shown or reachable by a link in another session."""
from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import numpy as np
import streamlit as st

from core import data
from core.data.images import UPLOAD_PREFIX, image_id, load_upload
from core.errors import BadImageError

IMAGE_TYPES = ["png", "jpg", "jpeg", "gif", "bmp", "tif", "tiff", "webp"]
CHECKPOINT_TYPES = ["pt", "pth", "ckpt", "safetensors", "bin"]
MAX_CHECKPOINT_MB = 50   # .streamlit/config.toml server.maxUploadSize: larger ones load by path


def images() -> dict[str, np.ndarray]:
    """This session's uploaded images: {key: uint8 square, at most UPLOAD_SIDE px}."""
    return st.session_state.setdefault("uploads", {})


def _names() -> dict[str, str]:
    return st.session_state.setdefault("upload_names", {})


def gallery_items() -> list[dict]:
    """This session's uploads as gallery tiles, each captioned with its file's name."""
    names = _names()
    return [{"key": k, "image": v, "title": f"your image {names.get(k, '')}".strip(),
             "caption": _short(Path(names.get(k, "yours")).stem)}
            for k, v in images().items()]


def _short(name: str, most: int = 10) -> str:
    return name if len(name) <= most else name[:most - 1] + "…"


def add_image(name: str, blob: bytes) -> tuple[str | None, str | None]:
    """Decode and keep an uploaded image: (its key, None), or (None, why not)."""
    try:
        arr = load_upload(blob)
    except BadImageError as e:
        return None, f"{name}: {e}."
    key = UPLOAD_PREFIX + image_id(arr)
    images()[key] = arr
    _names()[key] = name
    return key, None


def remove_image(key: str) -> None:
    images().pop(key, None)
    _names().pop(key, None)


def _private_folder() -> Path:
    """A folder only this session writes to (0700, a random name)."""
    folder = st.session_state.get("_upload_dir")
    if folder is None or not Path(folder).is_dir():
        root = data.cache_dir() / "uploads"
        root.mkdir(parents=True, exist_ok=True)
        folder = tempfile.mkdtemp(prefix=secrets.token_hex(8) + "-", dir=root)
        os.chmod(folder, 0o700)
        st.session_state["_upload_dir"] = folder
    return Path(folder)


def save_checkpoint(upload) -> str:
    """An uploaded checkpoint written to this session's private folder; its path."""
    blob = upload.getvalue()
    digest = hashlib.sha256(blob).hexdigest()[:16]
    name = Path(upload.name).name
    stem, _, suffix = name.rpartition(".")
    path = _private_folder() / f"{(stem or name)[:40]}-{digest}.{suffix.lower() or 'pt'}"
    if not path.exists():
        path.write_bytes(blob)
    return str(path)


def forget_checkpoints() -> None:
    folder = st.session_state.pop("_upload_dir", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
