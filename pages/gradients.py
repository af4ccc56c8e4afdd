"""Input gradients: click an image, see which pixels move each model's loss."""
from ui.handover import setup

setup()   # before the heavy imports: a cold server's deep link hands over at once

import streamlit as st  # noqa: E402

from core import figures  # noqa: E402
from core.analyses import gradients  # noqa: E402
from ui import backend, page, picker, presentation, sidebar, state, uploads  # noqa: E402

PAGE = "gradients"
page.header(PAGE)
a, b = sidebar.chosen("a"), sidebar.chosen("b")
with page.guard():
    probe_a = backend.model(a)
    backend.model(b)
SIZE = 250 if presentation.presenting() else 220
with st.container(key="settings"):      # on a projector: the gradients alone
    picker.picker(PAGE, "gr", probe_a.kind, probe_a.input_size)
settings = state.current(PAGE)
state.publish(PAGE)

chosen = picker.chosen(settings["gr_img"], probe_a.input_size)
if chosen is None:
    st.stop()
image, title, label = chosen
with page.guard():
    job_list = gradients.view_jobs(backend.model, settings, uploads.images())
found = page.results(job_list, "Compute the gradients", "gr_go", type="primary", auto=True)
if found is not None:
    cols = st.columns(3)
    cols[0].markdown(f"**Original**  \n{title}")
    cols[0].image(figures.upscale(image, 8), width=SIZE)
    for col, spec, res in zip(cols[1:], (a, b), found):
        col.markdown(f"**{backend.label(spec)}**  \n{backend.model_kind(spec)} model")
        col.image(figures.upscale(gradients.gradient_image(res["gradient"].float()[None])[0], 8),
                  width=SIZE)
        col.caption(f"predicts {backend.model(spec).classes[res['predicted']]} · "
                    f"low-frequency share **{res['low_frequency']:.0%}**")
    page.caption(PAGE, f"{title}: the loss gradient of {backend.label(a)} and {backend.label(b)}"
                       f"{'' if label is None else ' against its label'}")
    page.export_menu(f"gradients-{settings['gr_img']}", page.optimisation_files(
        {"kind": "input_gradient", "jobs": [j.inputs for j in job_list]},
        {"Image and gradients, PNG": ([image] + [gradients.gradient_image(
            r["gradient"].float()[None])[0] for r in found], 8,
            ["image"] + [backend.label(s) for s in (a, b)])}))
