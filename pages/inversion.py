"""Representation inversion: click an image, watch a robust and a standard model rebuild it."""
import numpy as np
import streamlit as st

from core import backend, data, exports, figures, images, inversion, views
from core.errors import BadImageError

PAPER = ("Engstrom, Ilyas, Santurkar, Tsipras, Tran, Madry: *Adversarial Robustness as a Prior "
         "for Learned Representations*, 2019")

backend.page_header("Representation inversion", "Click an image. Each model gets only the image's representation R(x) (the "
           "penultimate layer) and searches, from gray noise, for an input x' whose "
           "representation matches: minimise ‖R(x') − R(x)‖ / ‖R(x)‖. A robust model's "
           f"reconstruction looks like the image; a standard model's does not. After {PAPER}.")

a, b = backend.selected("a"), backend.selected("b")
PAGE = "inversion"


# ------------------------------------------------------------------ sources

def gallery_items(source: str) -> list[dict]:
    if source == "samples":
        return [{"key": s.key, "image": s.image, "title": f"{s.title} (CIFAR-10 test image)",
                 "caption": data.CLASSES[s.label]} for s in backend.samples()]
    if source == "photos":
        return [{"key": s.key, "image": s.image, "title": s.title, "caption": s.title.split(" (")[0]}
                for s in backend.photos()]
    if source == "test":
        test = backend.test_set()
        backend.url_state("inv_page", 0)
        page = st.number_input("Page of the shuffled test set", 0, len(test) // 24 - 1,
                               key="inv_page", help="24 images a page, in a fixed shuffle.")
        order = data.shuffled_order(len(test))
        idx = order[page * 24:(page + 1) * 24].tolist()
        return [{"key": f"test-{i}", "image": test.images[i].numpy().transpose(1, 2, 0),
                 "title": f"test image {i}: {data.CLASSES[int(test.labels[i])]}",
                 "caption": data.CLASSES[int(test.labels[i])]} for i in idx]
    return [{"key": k, "image": v, "title": "your upload", "caption": "upload"}
            for k, v in images.saved_uploads().items()]


# In presentation mode the reconstructions come first: on a projector the gallery
# would push them below the fold. Containers keep their places whatever the fill order.
_top, _settings, _results, _bottom = (st.container() for _ in range(4))

with _bottom if backend.presenting() else _top:
    sources = {"samples": "CIFAR-10 samples", "photos": "Photos (out of distribution)",
               "upload": "Upload"}
    if backend.test_set() is not None:
        sources = {"test": "CIFAR-10 test set", **sources}
    backend.url_state("inv_source", "samples", list(sources))
    source = st.segmented_control("Images", list(sources), key="inv_source",
                                  format_func=sources.get) or "samples"

    if source == "upload":
        up = st.file_uploader("An image (any format Pillow reads; it is centre-cropped and "
                              "resized to 32x32)", key="inv_upload")
        if up is not None:
            try:
                arr = images.load_upload(up.getvalue())
            except BadImageError as e:
                st.error(f"{up.name}: {e}", icon=":material/broken_image:")
            else:
                st.session_state["inv_img"] = images.save_upload(arr)

    items = gallery_items(source)
    backend.url_state("inv_img", items[0]["key"] if items else "foolbox-00")
    if items:
        backend.gallery(items, "inv_img", label=sources[source])
    elif source == "upload":
        st.caption("Uploaded images appear here.")

with _settings, st.container(key="settings"), st.expander("Settings", icon=":material/settings:"):
    c = st.columns(4)
    probe_a = backend.model(a)
    layer_options = [probe_a.representation_layer] + [x for x in probe_a.layers
                                                     if x != probe_a.representation_layer]
    backend.url_state("inv_layer", probe_a.representation_layer, layer_options)
    layer = c[0].selectbox("Layer", layer_options, key="inv_layer",
                           help="The representation to match: the penultimate layer in the "
                                "paper, or any earlier tap.")
    backend.url_state("inv_method", "adam", ["adam", "normgrad"])
    method = c[1].selectbox("Optimiser", ["adam", "normgrad"], key="inv_method",
                            format_func={"adam": "fast (Adam with a cosine schedule)",
                                         "normgrad": "paper (normalised gradient, step 0.1)"}.get)
    default_steps = inversion.DEFAULTS["invert"][method][0]
    backend.url_state("inv_steps", default_steps)
    steps = c[2].number_input("Steps", 10, 10_000, key="inv_steps", step=50)
    backend.url_state("inv_seed", 0)
    gseed = c[3].number_input("Seed", 0, 10_000, key="inv_seed",
                              help="Seed of the starting noise (0.5 + N(0,1)/20).")
backend.publish(["inv_source", "inv_img", "inv_layer", "inv_method", "inv_steps", "inv_seed"])

with _results:
    chosen = views.image_for(st.session_state["inv_img"])
    if chosen is None:
        st.info("Choose an image above.")
        st.stop()
    image, title, _ = chosen

    with backend.guard():
        specs = [a, b]
        job_list = views.inversion_jobs(backend.model, backend.view_settings(PAGE))[:2]
        cols = st.columns(3)
        cols[0].markdown(f"**Original**  \n{title}")
        cols[0].image(figures.upscale(image, 7), width="stretch")
        slots, notes = [], []
        for k, s in enumerate(specs):
            cols[k + 1].markdown(f"**{backend.label(s)}**  \n{'robust' if k == 0 else 'standard'} "
                                 f"model {'A' if k == 0 else 'B'}")
            slots.append(cols[k + 1].empty())
            notes.append(cols[k + 1].empty())

        def show(i, step, total, loss, images):
            if images is not None:
                slots[i].image(figures.upscale(images[0], 7), width="stretch")
            if images is not None or step % 20 == 0:
                notes[i].caption(f"step {step}/{total} · loss {loss:.3f}")

        results = backend.run_live(job_list, show)
        for k, res in enumerate(results):
            slots[k].image(figures.upscale(res["images"][0], 7), width="stretch")
            notes[k].markdown(f"representation loss **{float(res['loss'][0]):.3f}** · "
                              f"PSNR **{res['psnr']:.1f} dB** · SSIM **{res['ssim']:.2f}**")
        backend.figure_caption(PAGE, f"{title}: reconstructed from the {layer} representation of "
                                     f"{backend.label(a)} (robust) and {backend.label(b)} (standard)")
        inputs = {"kind": "inversion", "image": st.session_state["inv_img"],
                  "jobs": [j.inputs for j in job_list]}
        stem = f"inversion-{st.session_state['inv_img']}"
        backend.export_menu(stem, [
            ("Original + reconstructions, PNG", lambda: exports.image_strip(
                [image] + [r["images"][0] for r in results], inputs, 8,
                ["original"] + [backend.label(s) for s in specs]), ".png", "image/png"),
            (f"Optimisation of {backend.label(a)}, GIF", lambda: exports.gif(
                [f[1][0] for f in results[0]["frames"]], {**inputs, "model": a}), "-a.gif", "image/gif"),
            (f"Optimisation of {backend.label(b)}, GIF", lambda: exports.gif(
                [f[1][0] for f in results[1]["frames"]], {**inputs, "model": b}), "-b.gif", "image/gif"),
            ("Data, JSON", lambda: exports.to_json(
                [{k: r[k] for k in ("loss", "psnr", "ssim", "l2", "loss_curve", "settings")}
                 for r in results], inputs), ".json", "application/json"),
        ])
        curves = {backend.label(s): np.asarray(r["loss_curve"])[:, 0] for s, r in zip(specs, results)}
        with st.expander("Loss curves and frames", icon=":material/show_chart:"):
            st.plotly_chart(figures.curve(list(range(len(next(iter(curves.values()))))), curves, "step",
                                          "‖R(x') − R(x)‖ / ‖R(x)‖", log_y=True), key="inv_curve")
            for s, r in zip(specs, results):
                st.caption(backend.label(s))
                st.image([figures.upscale(f[1][0], 3) for f in r["frames"]],
                         caption=[f"step {f[0]}" for f in r["frames"]])

st.subheader("How recognisable are the reconstructions?")
st.caption("Mean SSIM and PSNR between reconstruction and original over the 20 shipped "
           "CIFAR-10 test images (fast optimiser, seed 0). SSIM follows structure; PSNR "
           "punishes the high contrast of robust reconstructions more than grey noise.")
with backend.guard():
    q_jobs = views.inversion_jobs(backend.model, backend.view_settings(PAGE))[-2:]
    q = [backend.stored(j) for j in q_jobs]
    if any(v is None for v in q):
        if st.button("Measure reconstruction quality", icon=":material/straighten:"):
            q = [backend.run_job(j) for j in q_jobs]
    if all(v is not None for v in q):
        rows = [{"model": backend.label(s), "mean PSNR (dB)": round(v["mean_psnr"], 2),
                 "mean SSIM": round(v["mean_ssim"], 3), "mean representation loss":
                 round(v["mean_loss"], 4)} for s, v in zip((a, b), q)]
        st.dataframe(rows, hide_index=True)
