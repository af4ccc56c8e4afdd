"""Stitching matrix: are robust and standard representations compatible, layer by layer?"""
from ui.handover import setup

setup()   # before the heavy imports: a cold server's deep link hands over at once

import json  # noqa: E402

import streamlit as st  # noqa: E402

from core import cka, data, exports, figures, stitching, views  # noqa: E402
from ui import backend, page, presentation, sidebar, state  # noqa: E402

PAGE = "stitching"
page.header(PAGE)

a = sidebar.chosen("a")
with page.guard():
    model_a = backend.model(a)
# the rows join models made for model A's images
robust = backend.seeing_like(backend.robust_specs(), a)
standard = backend.seeing_like(backend.standard_specs(), a)
if not robust or not standard:
    st.warning(f"The stitching matrix needs a robust and a standard model of "
               f"{data.KIND_NAMES[model_a.kind]} images at {model_a.input_size} px, as model A: "
               "add one under Add a model in the sidebar.", icon=":material/warning:")
    st.stop()
big = presentation.presenting()

chosen_a = a != views.DEFAULT_A     # a model A the person picked
auto = stitching.stitch_rows({**views.settings(PAGE, {}), "a": st.session_state["a"]}, robust,
                             standard, chosen_a)  # what each empty picker stands for
with st.container(key="settings"), st.container(border=True):
    c = st.columns(4)
    for col, key, pool, default in ((c[0], "st_r", robust, auto[0][0]),
                                    (c[1], "st_s", standard, auto[0][1]),
                                    (c[2], "st_s2", standard, auto[2][1]),
                                    (c[3], "st_r2", robust, auto[3][1])):
        state.selectbox(col, PAGE, key, [""] + pool,
                        format_func=lambda s, d=default: backend.label(s) if s
                        else f"auto: {backend.label(d)}")
    # a second row: in the first, "direct" was cut off below 1700 px of window
    c = st.columns([1.1, 1.4, 2.5])
    state.segmented(c[0], PAGE, "st_method")
    state.selectbox(c[1], PAGE, "st_metric")
    state.folder(c[2], PAGE, "st_folder", a)
    # the advanced recipe: open when a link or an earlier choice set any of it
    with st.expander("Advanced recipe", icon=":material/tune:",
                     expanded=stitching.page_recipe(state.current(PAGE)) is not None):
        c = st.columns(4)
        state.segmented(c[0], PAGE, "st_recipe")
        with page.guard():
            base = stitching.stitch_recipe(state.value(PAGE, "st_recipe"))
        state.selectbox(c[1], PAGE, "st_init")
        for col, key, name in ((c[2], "st_epochs", "epochs"), (c[3], "st_train", "train_images")):
            state.selectbox(col, PAGE, key, format_func=lambda v, n=base[name]: v and f"{int(v):,}"
                            or f"the recipe's ({n:,})")
        c = st.columns(4)
        state.selectbox(c[0], PAGE, "st_rank")
        adversarial = state.selectbox(c[1], PAGE, "st_adv")
        if adversarial == "madry":
            state.selectbox(c[2], PAGE, "st_alpha")
        if adversarial == "trades":
            state.selectbox(c[2], PAGE, "st_beta")
        state.selectbox(c[3], PAGE, "st_attack")
        if state.value(PAGE, "st_method") == "direct":
            st.caption("Direct matching is a closed-form fit: of these it reads the training "
                       "images and the rank.")
settings = state.current(PAGE)
state.publish(PAGE)
method, metric = settings["st_method"], settings["st_metric"]
setting = views.page_settings(PAGE)
pairs = stitching.stitch_rows(settings, robust, standard, chosen_a)
row_labels = [f"{kind}<br><sup>{backend.label(f)} → {backend.label(e)}</sup>"
              for kind, (f, e) in zip(stitching.STITCH_PAIRS, pairs)]

with page.guard():
    plan = stitching.stitch_plan(backend.model, settings, pairs)  # the grid matrix() uses
    layers, cell_jobs, ref_jobs = plan.grid.layers, plan.cells, plan.donors
    columns = plan.grid.column_labels()
    got = {j.key: backend.stored(j) for j in plan.jobs()}
    cells = [[got[j.key] for j in row] for row in cell_jobs]
    refs = {s: got[j.key] for s, j in ref_jobs.items()}
    matrix = plan.result(lambda j: got[j.key])
recipe, where = plan.recipe, cell_jobs[0][0].inputs

values = matrix.values(metric)
i, j = state.cell(settings, "st_cell", len(pairs), len(layers))
missing = [job for row, jrow in zip(cells, cell_jobs) for c, job in zip(row, jrow) if c is None]
number_format, low, high, colours = stitching.metric_scale(metric, values)
under = f" ({plan.recipe['attack'].threat()})" if metric.startswith("robust") else ""
title = f"{setting['st_metric'].show(metric)}{under}, {setting['st_method'].show(method)} matching"

left, right = st.columns([2.4, 1])
with left:
    fig = figures.matrix_heatmap(values, row_labels, columns, title=title, zmin=low, zmax=high,
                                 fmt=number_format, colorscale=colours, selected=(i, j), big=big)
    st.plotly_chart(fig, key="st_matrix", selection_mode="points",
                    on_select=state.pick_cell("st_matrix", "st_cell"))
    page.caption(PAGE, f"{title}; robust {backend.label(pairs[0][0])}, standard "
                       f"{backend.label(pairs[0][1])}")
    inputs = {"kind": "stitching matrix", "metric": metric, "method": method,
              "pairs": [{"front": f, "end": e} for f, e in pairs], "layers": layers,
              "recipe": cell_jobs[0][0].inputs["recipe"]}
    plain_rows = [f"{n}: {backend.label(f)} → {backend.label(e)}"
                  for n, (f, e) in zip(stitching.STITCH_PAIRS, pairs)]
    csv = matrix.to_csv(values, [(n, f, e) for n, (f, e) in zip(stitching.STITCH_PAIRS, pairs)])
    page.export_menu(f"stitching-{method}-{metric}", page.figure_files(lambda fmt: exports.heatmap(
        values, plain_rows, layers, title, inputs, fmt, col_title="stitching layer",
        annotate=number_format, vmin=low, vmax=high, cmap=colours,
        caption=f"{title}; {views.page(PAGE).paper}")) + [
        ("Data, CSV", lambda: exports.csv_with_inputs(csv, inputs), ".csv", "text/csv"),
        ("Cells, JSON", lambda: exports.to_json({"cells": cells, "references": refs}, inputs),
         ".json", "application/json")])
    if missing:
        st.caption(f"{len(missing)} of {values.size} cells are not computed yet (a dash).")
        page.results(missing + [job for job in ref_jobs.values() if got[job.key] is None],
                     f"Compute all {len(missing)} missing cells", "st-all",
                     what="Computing a stitching cell")
    source = (f" of {settings['st_folder']} (the first {where['train']['n']:,} of its fixed "
              f"shuffle for training, the next {where['test']['n']:,} for testing)"
              if "folder" in where["train"] else "")
    st.caption(f"Recipe: {stitching.describe_recipe(recipe, method, where['train']['n'])}; clean accuracy on "
               f"{where['test']['n']:,} test images, robust accuracy under "
               f"{recipe['attack'].describe()} on "
               f"{min(recipe['robust_images'], where['test']['n']):,}{source}.")

with right:
    front, end = pairs[i]
    layer, end_layer = plan.grid.points[i][j]
    st.markdown(f"**{stitching.STITCH_PAIRS[i]}** at **{columns[j]}**")
    st.caption(f"{backend.label(front)} [..{layer}] → 1x1 conv → {backend.label(end)} "
               f"[{end_layer}..]")
    cell = cells[i][j]
    if cell is None:
        st.info("This cell is not computed yet.")
        page.results([cell_jobs[i][j]] + [ref_jobs[s] for s in dict.fromkeys(pairs[i])
                                          if got[ref_jobs[s].key] is None],
                     "Compute this cell", "st-one", what="Computing this cell", type="primary")
    else:
        share = lambda v: "—" if v is None else f"{v:.1%}"  # noqa: E731
        m = st.columns(2)
        m[0].metric("Stitched, clean", share(cell["clean_accuracy"]))
        rob = cell.get("robust_accuracy")
        m[1].metric("Stitched, robust", share(rob))
        rows = []
        for role, s in (("front", front), ("end", end)):
            r = refs.get(s) or {}
            rows.append({"model": f"{role}: {backend.label(s)}",
                         "clean": share(r.get("clean_accuracy")),
                         "robust": share(r.get("robust_accuracy"))})
        rows.append({"model": "stitched", "clean": share(cell["clean_accuracy"]),
                     "robust": share(rob)})
        # a table wraps its names in a narrow column, where a data frame would scroll
        st.table(rows, hide_index=True, border="horizontal")
        if cell.get("dm_error") is not None:
            st.metric("Direct-matching error ‖AW−B‖/‖B‖", f"{cell['dm_error']:.3f}",
                      help="Relative least-squares error of the fit on the training data.")
        m = st.columns(2)     # a third column would cut the labels short in this panel
        for col, key, name, tip in (
                (m[0], "test_cka", "CKA", "Linear CKA of the stitched and the end model's own "
                                          "representation at this layer, on test images."),
                (m[1], "test_representation_error", "Relative L2",
                 "‖stitched − end‖ / ‖end‖ at this layer, on test images."),
                (st, "effective_rank", "Effective rank",
                 "exp of the entropy of the stitch's normalised singular values: the "
                 "directions it really uses.")):
            col.metric(name, "—" if cell.get(key) is None else f"{cell[key]:.3g}", help=tip)
        if cell.get("singular_values"):
            st.plotly_chart(figures.curve(list(range(1, len(cell["singular_values"]) + 1)),
                                          {"singular value": cell["singular_values"]},
                                          "index", "singular value", height=200),
                            key="st_spectrum")
        elif cell.get("test_cka") is None:
            st.caption("This cell was stored before CKA and the spectrum were measured: "
                       "`python -m core stitch ... --force` computes it again with them.")
        made = stitching.cell_recipe(cell)
        st.caption("Fitted with: " + ", ".join(
            f"{name} {made[key]:,}" if isinstance(made[key], int) else f"{name} {made[key]}"
            for key, name in (("start", "start"), ("epochs", "epochs"),
                              ("train_images", "training images"),
                              ("stitcher_attack", "stitcher trained adversarially,"),
                              ("rank", "rank")) if made[key] is not None) + ".")
        curve = (cell.get("history") or {}).get("curve") or {}
        if curve.get("step"):
            st.plotly_chart(figures.curve(curve["epoch"], {"loss": curve["loss"],
                                                           "accuracy": curve["accuracy"]},
                                          "epoch", "loss, accuracy", height=240),
                            key="st_curve")
        # the CKA of this layer pair, when the CKA explorer has it stored
        cka_job, transposed = cka.cka_request(backend.model, front, end, "blocks",
                                              folder=settings["st_folder"])
        v = cka.pair_value(backend.stored(cka_job), transposed, layer, end_layer)
        if v is not None:
            st.metric("CKA of this layer pair (benign)", f"{v:.3f}",
                      help=f"From the CKA explorer: linear CKA, "
                           f"{cka_job.inputs['images']['n']:,} images.")
        payload = {"pair": stitching.STITCH_PAIRS[i], "front": front, "end": end, "layer": layer,
                   "end_layer": end_layer,
                   "method": method, "recipe": cell_jobs[i][j].inputs["recipe"],
                   "fitted_with": stitching.cell_recipe(cell),
                   **{k: v for k, v in cell.items() if k != "history"}}
        st.download_button("Cell as JSON", json.dumps(payload, indent=1, default=float),
                           f"stitch-{front}-{end}-{layer}-{method}.json", "application/json",
                           icon=":material/download:")
