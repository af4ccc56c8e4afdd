"""Representation inversion: click an image, watch a robust and a standard model rebuild it."""
from ui.handover import setup

setup()   # before the heavy imports: a cold server's deep link hands over at once

import numpy as np  # noqa: E402
import streamlit as st  # noqa: E402

from core import exports, figures, inversion  # noqa: E402
from ui import backend, page, presentation, sidebar, state, uploads  # noqa: E402
from ui.picker import chosen as picker_choice  # noqa: E402
from ui.picker import picker  # noqa: E402

PAGE = "inversion"
page.header(PAGE)

a, b = sidebar.chosen("a"), sidebar.chosen("b")
with page.guard():          # a model that does not load: a sentence
    probe_a = backend.model(a)
    backend.model(b)
KIND, SIDE = probe_a.kind, probe_a.input_size   # the gallery shows images for model A
big = presentation.presenting()
SIZE = 250 if big else 220             # px of each image: three fit a 1280x720 projector

# The reconstructions come first on a projector (the gallery would push them below the
# fold); containers keep their places whatever the order they are filled in.
_top, _settings, _results, _bottom = (st.container() for _ in range(4))
with _bottom if big else _top:
    picker(PAGE, "inv", KIND, SIDE)

with _settings, st.container(key="settings"), st.expander("Settings", icon=":material/settings:"):
    c = st.columns([1, 1.7, 0.9, 0.9])     # the method's name is the longest value
    layer_options = [probe_a.representation_layer] + [x for x in probe_a.layers
                                                     if x != probe_a.representation_layer]
    state.selectbox(c[0], PAGE, "inv_layer", layer_options)
    method = state.selectbox(c[1], PAGE, "inv_method")
    # steps follow the optimiser's own default until the person sets them
    auto_steps = inversion.inversion_steps({"inv_steps": None, "inv_method": method})
    state.following(c[2], PAGE, "inv_steps", auto_steps, step=50)
    state.number(c[3], PAGE, "inv_seed")
settings = state.current(PAGE)
state.publish(PAGE, implicit={"inv_steps": auto_steps})

with _results:
    chosen = picker_choice(settings["inv_img"], SIDE)
    if chosen is None:
        st.stop()
    image, title, _ = chosen
    with page.guard():
        job_list = inversion.inversion_jobs(backend.model, settings, uploads.images())
    if any(backend.stored(j) is None for j in job_list):
        with page.guard():
            eta = backend.run_seconds(job_list)
        if eta > page.LONG_RUN_S:
            st.caption(f"{settings['inv_steps']} steps of both models take about "
                       f"{backend.duration(eta)} on this {backend.resolved_device().type.upper()}"
                       " (fewer steps in Settings take less); frames appear as they come.")
            if not page.button("Reconstruct", job_list, type="primary", key="inv_go",
                               icon=":material/play_arrow:"):
                st.stop()
    cols = st.columns(3)
    cols[0].markdown(f"**Original**  \n{title}")
    cols[0].image(figures.upscale(image, 8), width=SIZE)
    for k, s in enumerate((a, b)):
        cols[k + 1].markdown(f"**{backend.label(s)}**  \n{backend.model_kind(s)} model "
                             f"{'A' if k == 0 else 'B'}")
    results = page.live_frames(job_list, cols[1:], 8, SIZE, every=1 if SIDE > 64 else 20)
    for col, res in zip(cols[1:], results):
        col.image(figures.upscale(res["images"][0], 8), width=SIZE)
        col.markdown(f"representation loss **{float(res['loss'][0]):.3f}** · "
                     f"PSNR **{res['psnr']:.1f} dB** · SSIM **{res['ssim']:.2f}**")
    page.caption(PAGE, f"{title}: rebuilt from the {settings['inv_layer']} representation of "
                       f"{backend.label(a)} and {backend.label(b)}")
    inputs = {"kind": "inversion", "image": settings["inv_img"],
              "jobs": [j.inputs for j in job_list]}
    page.export_menu(f"inversion-{settings['inv_img']}", page.optimisation_files(
        inputs, {"Original + reconstructions, PNG": (
            [image] + [r["images"][0] for r in results], 8,
            ["original"] + [backend.label(s) for s in (a, b)])},
        {f"Optimisation of {backend.label(s)}, GIF": [f[1][0] for f in r["frames"]]
         for s, r in zip((a, b), results)}) + [
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
    q = page.results(q_jobs, "Measure reconstruction quality", "inv_quality",
                     icon=":material/straighten:")
    if q is not None:
        st.dataframe([{"model": backend.label(s), "mean PSNR (dB)": round(v["mean_psnr"], 2),
                       "mean SSIM": round(v["mean_ssim"], 3),
                       "mean representation loss": round(v["mean_loss"], 4)}
                      for s, v in zip((a, b), q)], hide_index=True)
