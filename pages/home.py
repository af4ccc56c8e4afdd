"""Home: what each page shows and where it comes from."""
from ui.handover import setup

setup()   # before the heavy imports: a cold server's deep link hands over at once

import streamlit as st  # noqa: E402

from core import analyses, zoo  # noqa: E402
from ui import backend, presentation  # noqa: E402

with st.container(horizontal=True, vertical_alignment="bottom"):
    st.title("RobustLens", width="stretch")
    with st.container(width="content"):
        presentation.exit_button()
st.markdown(
    "An interactive lab for seeing how **adversarially robust** and **standard** neural "
    "networks represent images. " + ("Every page compares two models." if
                                     presentation.presenting() else
                                     "Pick two models in the sidebar; every page compares them."))

cols = st.columns(2)
for i, p in enumerate(analyses.pages()):
    with cols[i % 2].container(border=True):
        st.page_link(p.script, label=p.title, icon=p.icon)
        st.markdown(p.summary)
        st.caption(p.paper)

st.subheader("The shipped models")
rows = []
for name in zoo.names():
    c = zoo.card(name)
    m = c.get("measured") or {}
    pgd = m.get("pgd", {})
    rows.append({"model": name, "training": zoo.short_label(c),
                 "clean": m.get("clean"),
                 "PGD-20 Linf 8/255": pgd.get("PGD-20 LINF eps 8/255 step 2/255"),
                 "PGD-20 L2 0.5": pgd.get("PGD-20 L2 eps 0.5 step 0.125"),
                 "parameters": c.get("parameters")})
if rows:
    st.dataframe(rows, hide_index=True, column_config={
        k: st.column_config.NumberColumn(format="percent") for k in
        ("clean", "PGD-20 Linf 8/255", "PGD-20 L2 0.5")})
    st.caption("Accuracy measured on the full CIFAR-10 test set with `python -m core eval`; "
               "each model's card (sidebar) holds its recipe and wall time.")
else:
    st.info("No models in pretrained/ yet.")

if backend.test_set() is None:
    st.info("The CIFAR-10 test set is not on this machine: the pages use the shipped sample "
            "images and precomputed results. " + backend.data.GET_DATA_HINT,
            icon=":material/info:")
