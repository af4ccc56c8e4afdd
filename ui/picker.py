"""The image picker of the pages that start from one image: the shipped samples of model
A's data set, out-of-distribution photos, the CIFAR-10 test set (a page of its fixed
shuffle) and this session's uploads, as a clickable gallery."""
from __future__ import annotations

import streamlit as st

from core import data, views
from core.data import images

from . import backend, state, uploads
from .gallery import gallery

PER_PAGE = 24


def items(source: str, kind: str, side: int, page_no: int = 0) -> list[dict]:
    """A source's gallery tiles ({key, image, title, caption}) for a model of `kind`
    images at `side` px."""
    if source == "samples":
        return [{"key": s.key, "image": s.image,
                 "title": f"{s.title} ({s.source.split(' shipped')[0]})",
                 "caption": s.title.split(" #")[0]}
                for s in backend.samples(kind) or backend.samples()]
    if source == "photos":
        return [{"key": s.key, "image": s.image, "title": s.title,
                 "caption": s.title.split(" (")[0]} for s in backend.photos(side)]
    if source == "test":
        test = backend.test_set() if kind == "cifar10" else None
        if test is None:
            return []
        order = data.shuffled_order(len(test))
        return [{"key": f"test-{i}", "image": test.images[i].numpy().transpose(1, 2, 0),
                 "title": f"test image {i}: {data.CLASSES[int(test.labels[i])]}",
                 "caption": data.CLASSES[int(test.labels[i])]}
                for i in order[page_no * PER_PAGE:(page_no + 1) * PER_PAGE].tolist()]
    return uploads.gallery_items()


def source_name(source: str, kind: str) -> str:
    """'ImageNet samples' for an ImageNet model A, the source's own name otherwise."""
    if source == "samples" and kind == "imagenet":
        return f"{data.KIND_NAMES[kind]} samples"
    return views.IMAGE_SOURCES[source]


def picker(page: str, prefix: str, kind: str, side: int) -> None:
    """A page's image picker (its settings: core.views.image_settings(prefix)): the
    sources as a segmented control, the chosen source's tiles as a gallery whose click
    sets the image setting; the test set by pages, an uploader and a remove button for
    uploads (each upload stays in this browser session)."""
    source_key, image_key, page_key = (f"{prefix}_{k}" for k in ("source", "img", "page"))
    def listed(source: str) -> list[dict]:
        return items(source, kind, side, state.value(page, page_key))

    def changed() -> None:
        """A new source shows its own first image, not the last one of the old source."""
        tiles = listed(st.session_state[source_key])
        if st.session_state.get(image_key) not in {t["key"] for t in tiles}:
            st.session_state[image_key] = tiles[0]["key"] if tiles else ""

    def uploader() -> str:
        """A new key after each upload: the uploader comes back empty, not still naming
        the file just taken (or refused)."""
        return f"{page}_upload_{st.session_state.get('_uploads_taken', 0)}"

    def uploaded() -> None:
        file = st.session_state.get(uploader())
        if file is not None:
            key, error = uploads.add_image(file.name, file.getvalue())
            if key is None:
                st.session_state["_upload_error"] = error
            else:
                st.session_state[image_key] = key
            st.session_state["_uploads_taken"] = st.session_state.get("_uploads_taken", 0) + 1

    sources = [s for s in views.IMAGE_SOURCES if s != "test" or (kind == "cifar10"
                                                     and backend.test_set() is not None)]
    state.seed(page, source_key, sources)
    source = st.segmented_control("Images", sources, key=source_key, on_change=changed,
                                  format_func=lambda s: source_name(s, kind)) or "samples"
    if source == "test":
        state.number(st, page, page_key)
    if source == "upload":
        st.file_uploader(f"Your image (PNG, JPEG, GIF, BMP, TIFF or WebP, up to "
                         f"{images.MAX_UPLOAD_BYTES // 2**20} MB; centre-cropped to each model's "
                         f"input size, {side}x{side} for A). It "
                         "stays in this browser session.", type=uploads.IMAGE_TYPES,
                         key=uploader(), on_change=uploaded,
                         max_upload_size=images.MAX_UPLOAD_BYTES // 2**20)   # says one limit
        error = st.session_state.pop("_upload_error", None)
        if error:
            st.warning(error, icon=":material/broken_image:")
    tiles = listed(source)
    state.seed(page, image_key)
    if source == "samples" and tiles and st.session_state[image_key].split("-")[0] in (
            "foolbox", "imagenet") and st.session_state[image_key] not in {t["key"] for t in tiles}:
        st.session_state[image_key] = tiles[0]["key"]   # a sample of the other data set
    if tiles:
        gallery(tiles, image_key, label=source_name(source, kind))
        if source == "upload" and st.session_state[image_key] in uploads.images():
            st.button("Remove this image", icon=":material/delete:", key=f"{page}_remove",
                      on_click=lambda: (uploads.remove_image(st.session_state[image_key]),
                                        changed()))
    elif source == "upload":
        st.caption("Your images appear here; nobody else sees them.")


def chosen(key: str, side: int) -> tuple | None:
    """The picked image (uint8 HWC, title, label), or None after saying why there is none
    (an upload of another browser session, or no choice yet)."""
    found = data.image_for(key, uploads.images(), side)
    if found is None:
        if key.startswith(images.UPLOAD_PREFIX):
            st.info("That image was uploaded in another browser session, and uploads stay "
                    "private to the session that made them. Choose an image here.")
        else:
            st.info("Choose an image.")
    return found
