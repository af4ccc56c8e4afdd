"""Representation inversion: click an image, watch a robust and a standard model rebuild it."""
from ui.handover import setup

setup()   # before the heavy imports: a cold server's deep link hands over at once

import numpy as np  # noqa: E402
import streamlit as st  # noqa: E402

from core import data, exports, figures, images, inversion, views  # noqa: E402
from ui import backend, page, presentation, sidebar, state, uploads  # noqa: E402
from ui.gallery import gallery  # noqa: E402

PAGE = "inversion"
page.header(PAGE, "Representation inversion",
            "Click an image: each model rebuilds it from its representation alone",
            "Each model gets only the image's representation R(x) (the penultimate layer) and "
            "searches, from gray noise, for an input x' whose representation matches: minimise "
            "‖R(x') − R(x)‖ / ‖R(x)‖ by gradient descent in pixel space, with no image prior. A "
            "robust model's reconstruction looks like the image; a standard model's does not.")

a, b = sidebar.chosen("a"), sidebar.chosen("b")
with page.guard():          # a model that does not load: a sentence
    probe_a = backend.model(a)
    backend.model(b)
KIND, SIDE = probe_a.kind, probe_a.input_size   # the gallery shows images for model A
big = presentation.presenting()
setting = views.page_settings(PAGE)
SIZE = 250 if big else 220             # px of each image: three fit a 1280x720 projector


# ------------------------------------------------------------------ sources

def items_of(source: str) -> list[dict]:
    if source == "samples":
        return [{"key": s.key, "image": s.image,
                 "title": f"{s.title} ({s.source.split(' shipped')[0]})",
                 "caption": s.title.split(" #")[0]}
                for s in backend.samples(KIND) or backend.samples()]
    if source == "photos":
        return [{"key": s.key, "image": s.image, "title": s.title,
                 "caption": s.title.split(" (")[0]} for s in backend.photos(SIDE)]
    if source == "test":
        test = backend.test_set() if KIND == "cifar10" else None
        if test is None:
            return []
        page_no = state.value(PAGE, "inv_page")
        order = data.shuffled_order(len(test))
        return [{"key": f"test-{i}", "image": test.images[i].numpy().transpose(1, 2, 0),
                 "title": f"test image {i}: {data.CLASSES[int(test.labels[i])]}",
                 "caption": data.CLASSES[int(test.labels[i])]}
                for i in order[page_no * 24:(page_no + 1) * 24].tolist()]
    return uploads.gallery_items()


def source_name(source: str) -> str:
    """'ImageNet samples' for an ImageNet model A, the setting's own label otherwise."""
    if source == "samples" and KIND == "imagenet":
        return f"{data.KIND_NAMES[KIND]} samples"
    return setting["inv_source"].show(source)


def source_changed() -> None:
    """A new source shows its own first image, not the last one of the old source."""
    items = items_of(st.session_state["inv_source"])
    if st.session_state.get("inv_img") not in {it["key"] for it in items}:
        st.session_state["inv_img"] = items[0]["key"] if items else ""


def uploader_key() -> str:
    """A new key after each upload: the uploader comes back empty, not still naming the
    file just taken (or refused)."""
    return f"inv_upload_{st.session_state.get('_uploads_taken', 0)}"


def uploaded() -> None:
    file = st.session_state.get(uploader_key())
    if file is not None:
        key, error = uploads.add_image(file.name, file.getvalue())
        if key is None:
            st.session_state["_upload_error"] = error
        else:
            st.session_state["inv_img"] = key
        st.session_state["_uploads_taken"] = st.session_state.get("_uploads_taken", 0) + 1


# The reconstructions come first on a projector (the gallery would push them below the
# fold); containers keep their places whatever the order they are filled in.
_top, _settings, _results, _bottom = (st.container() for _ in range(4))

with _bottom if big else _top:
    sources = [s for s in setting["inv_source"].options
               if s != "test" or (KIND == "cifar10" and backend.test_set() is not None)]
    state.seed(PAGE, "inv_source", sources)
    source = st.segmented_control("Images", sources, key="inv_source", format_func=source_name,
                                  on_change=source_changed) or "samples"
    if source == "test":
        state.number(st, PAGE, "inv_page")
    if source == "upload":
        st.file_uploader(f"Your image (PNG, JPEG, GIF, BMP, TIFF or WebP, up to "
                         f"{images.MAX_UPLOAD_BYTES // 2**20} MB; centre-cropped to each model's "
                         f"input size, {SIDE}x{SIDE} for A). It "
                         "stays in this browser session.", type=uploads.IMAGE_TYPES,
                         key=uploader_key(), on_change=uploaded,
                         max_upload_size=images.MAX_UPLOAD_BYTES // 2**20)   # says one limit
        error = st.session_state.pop("_upload_error", None)
        if error:
            st.warning(error, icon=":material/broken_image:")
    items = items_of(source)
    state.seed(PAGE, "inv_img")
    if source == "samples" and items and st.session_state["inv_img"].split("-")[0] in (
            "foolbox", "imagenet") and st.session_state["inv_img"] not in {i["key"] for i in items}:
        st.session_state["inv_img"] = items[0]["key"]   # a sample of the other data set
    if items:
        gallery(items, "inv_img", label=source_name(source))
        if source == "upload" and st.session_state["inv_img"] in uploads.images():
            st.button("Remove this image", icon=":material/delete:", key="inv_remove",
                      on_click=lambda: (uploads.remove_image(st.session_state["inv_img"]),
                                        source_changed()))
    elif source == "upload":
        st.caption("Your images appear here; nobody else sees them.")

with _settings, st.container(key="settings"), st.expander("Settings", icon=":material/settings:"):
    c = st.columns([1, 1.7, 0.9, 0.9])     # the method's name is the longest value
    layer_options = [probe_a.representation_layer] + [x for x in probe_a.layers
                                                     if x != probe_a.representation_layer]
    state.selectbox(c[0], PAGE, "inv_layer", layer_options)
    method = state.selectbox(c[1], PAGE, "inv_method")
    # steps follow the optimiser's own default until the person sets them
    auto_steps = inversion.inversion_steps({"inv_steps": None, "inv_method": method})
    if "inv_steps" not in st.session_state:
        state.seed(PAGE, "inv_steps")
        st.session_state["_steps_auto"] = st.session_state["inv_steps"] is None
    if st.session_state.get("_steps_auto", True):
        st.session_state["inv_steps"] = auto_steps
    state.number(c[2], PAGE, "inv_steps", step=50,
                 on_change=lambda: st.session_state.update(_steps_auto=False))
    state.number(c[3], PAGE, "inv_seed")
settings = state.current(PAGE)
state.publish(PAGE, implicit={"inv_steps": auto_steps})

with _results:
    chosen = data.image_for(settings["inv_img"], uploads.images(), SIDE)
    if chosen is None:
        if settings["inv_img"].startswith("upload-"):
            st.info("That image was uploaded in another browser session, and uploads stay "
                    "private to the session that made them. Choose an image here.")
        else:
            st.info("Choose an image.")
        st.stop()
    image, title, _ = chosen
    with page.guard():
        job_list = inversion.inversion_jobs(backend.model, settings, uploads.images())
        if any(backend.stored(j) is None for j in job_list):
            eta = backend.run_seconds(job_list)
            if eta > page.LONG_RUN_S:
                st.caption(f"{settings['inv_steps']} steps of both models take about "
                           f"{backend.duration(eta)} on this "
                           f"{backend.resolved_device().type.upper()} (fewer steps in Settings "
                           "take less); frames appear as they come.")
                if not page.button("Reconstruct", job_list, type="primary", key="inv_go",
                                   icon=":material/play_arrow:"):
                    st.stop()
        cols = st.columns(3)
        cols[0].markdown(f"**Original**  \n{title}")
        cols[0].image(figures.upscale(image, 8), width=SIZE)
        slots, notes = [], []
        for k, s in enumerate((a, b)):
            cols[k + 1].markdown(f"**{backend.label(s)}**  \n{backend.model_kind(s)} model "
                                 f"{'A' if k == 0 else 'B'}")
            slots.append(cols[k + 1].empty())
            notes.append(cols[k + 1].empty())

        def show(i, e):
            if e.preview is not None:
                slots[i].image(figures.upscale(e.preview[0], 8), width=SIZE)
            if e.preview is not None or int(e.done) % 20 == 0 or SIDE > 64:
                notes[i].caption(f"step {int(e.done)}/{int(e.total)} · loss {e.loss or 0:.3f}")

        results = backend.run_live(job_list, show)
        for k, res in enumerate(results):
            slots[k].image(figures.upscale(res["images"][0], 8), width=SIZE)
            notes[k].markdown(f"representation loss **{float(res['loss'][0]):.3f}** · "
                              f"PSNR **{res['psnr']:.1f} dB** · SSIM **{res['ssim']:.2f}**")
        page.caption(PAGE, f"{title}: rebuilt from the {settings['inv_layer']} representation of "
                           f"{backend.label(a)} and {backend.label(b)}")
        inputs = {"kind": "inversion", "image": settings["inv_img"],
                  "jobs": [j.inputs for j in job_list]}
        stem = f"inversion-{settings['inv_img']}"
        page.export_menu(stem, [
            ("Original + reconstructions, PNG", lambda: exports.image_strip(
                [image] + [r["images"][0] for r in results], inputs, 8,
                ["original"] + [backend.label(s) for s in (a, b)]), ".png", "image/png"),
            (f"Optimisation of {backend.label(a)}, GIF", lambda: exports.gif(
                [f[1][0] for f in results[0]["frames"]], {**inputs, "model": a}), "-a.gif", "image/gif"),
            (f"Optimisation of {backend.label(b)}, GIF", lambda: exports.gif(
                [f[1][0] for f in results[1]["frames"]], {**inputs, "model": b}), "-b.gif", "image/gif"),
            ("Data, JSON", lambda: exports.to_json(
                [{k: r[k] for k in ("loss", "psnr", "ssim", "l2", "loss_curve", "settings")}
                 for r in results], inputs), ".json", "application/json"),
        ])
        curves = {backend.label(s): np.asarray(r["loss_curve"])[:, 0] for s, r in zip((a, b), results)}
        with st.expander("Loss curves and frames", icon=":material/show_chart:"):
            st.plotly_chart(figures.curve(list(range(len(next(iter(curves.values()))))), curves,
                                          "step", "‖R(x') − R(x)‖ / ‖R(x)‖", log_y=True),
                            key="inv_curve")
            for s, r in zip((a, b), results):
                st.caption(backend.label(s))
                st.image([figures.upscale(f[1][0], 3) for f in r["frames"]],
                         caption=[f"step {f[0]}" for f in r["frames"]])

with st.container(key="page-notes"):
    st.subheader("How recognisable are the reconstructions?")
    st.caption("Mean SSIM and PSNR between reconstruction and original over the 20 shipped "
               "sample images of each model's data set (fast optimiser, seed 0). SSIM follows "
               "structure; PSNR "
               "punishes the high contrast of robust reconstructions more than grey noise.")
    with page.guard():
        q_jobs = inversion.quality_jobs(backend.model, settings)
        q = [backend.stored(j) for j in q_jobs]
        todo = [j for j, v in zip(q_jobs, q) if v is None]
        if todo and page.button("Measure reconstruction quality", todo,
                                icon=":material/straighten:"):
            q = [backend.run_job(j) for j in q_jobs]
        if all(v is not None for v in q):
            st.dataframe([{"model": backend.label(s), "mean PSNR (dB)": round(v["mean_psnr"], 2),
                           "mean SSIM": round(v["mean_ssim"], 3),
                           "mean representation loss": round(v["mean_loss"], 4)}
                          for s, v in zip((a, b), q)], hide_index=True)
