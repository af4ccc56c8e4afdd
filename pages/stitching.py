"""Stitching matrix: are robust and standard representations compatible, layer by layer?"""
import json

import numpy as np
import streamlit as st

from core import backend, exports, figures, jobs

PAPER = ("Balogh & Jelasity: *On the Functional Similarity of Robust and Non-Robust Neural "
         "Representations*, ICML 2023; direct matching after their AAAI 2025 follow-up")
RECIPE = jobs.STITCH_RECIPE

backend.page_header("Stitching matrix", "The front of one network up to a layer, a trained 1x1 convolution, and the rest of "
           "another network. Both donors are frozen: only the stitching layer learns. Can the "
           f"end model use the front model's representation? After {PAPER}.")

specs = backend.model_specs()
robust, standard = backend.robust_specs(), backend.standard_specs()
if not robust or not standard:
    st.warning("The stitching matrix needs at least one robust and one standard model.")
    st.stop()


def pick(col, key, title, options, preferred, avoid=None):
    default = next((s for s in preferred if s in options and s != avoid),
                   next((s for s in options if s != avoid), options[0]))
    backend.url_state(key, default, options)
    return col.selectbox(title, options, key=key, format_func=backend.label)


with st.container(border=True, key="settings"):
    c = st.columns(4)
    r1 = pick(c[0], "st_r", "Robust model", robust, ["resnet18-linf-8", backend.selected("a")])
    s1 = pick(c[1], "st_s", "Standard model", standard, [backend.selected("b"), "resnet18-standard-s0"])
    s2 = pick(c[2], "st_s2", "Second standard model", standard, ["resnet18-standard-s1"], avoid=s1)
    r2 = pick(c[3], "st_r2", "Second robust model", robust, ["resnet18-l2-1.0"], avoid=r1)
    d = st.columns([1, 1.6, 1.4])
    backend.url_state("st_method", "task", ["task", "direct"])
    method = d[0].segmented_control(
        "Matching", ["task", "direct"], key="st_method",
        format_func={"task": "task loss", "direct": "direct"}.get,
        help="Task loss: the stitching layer is trained with cross-entropy through the frozen "
             "end model. Direct: a closed-form least-squares fit to the end model's own "
             "activation at that layer (every pixel a sample).") or "task"
    metrics = {"clean": "clean accuracy", "robust": "robust accuracy (PGD Linf 8/255)",
               "clean_rel": "clean, relative to the end model",
               "robust_rel": "robust, relative to the end model"}
    backend.url_state("st_metric", "robust", list(metrics))
    metric = d[1].selectbox("Cells show", list(metrics), key="st_metric", format_func=metrics.get)
backend.publish(["st_r", "st_s", "st_s2", "st_r2", "st_method", "st_metric"])

pairs = [(r1, s1), (s1, r1), (s1, s2), (r1, r2)]
row_labels = [f"{name}<br><sup>{backend.label(f)} → {backend.label(e)}</sup>"
              for name, (f, e) in zip(jobs.STITCH_PAIRS, pairs)]

with backend.guard():
    plan = jobs.stitch_matrix(backend.model, pairs, method)  # the grid stitching.matrix uses
    layers, cell_jobs, ref_jobs = plan.grid.layers, plan.cells, plan.donors
    got = {j.key: backend.stored(j) for j in plan.jobs()}
    cells = [[got[j.key] for j in row] for row in cell_jobs]
    refs = {s: got[j.key] for s, j in ref_jobs.items()}
    matrix = plan.result(lambda j: got[j.key])

key = "robust_accuracy" if metric.startswith("robust") else "clean_accuracy"
values = matrix.robust if metric.startswith("robust") else matrix.clean
if metric.endswith("_rel"):
    ends = [np.nan if not (ref and ref.get(key)) else ref[key] for ref in matrix.end_accuracy]
    values = values / np.array(ends)[:, None]

backend.url_state("st_cell", [0, 0])
sel = st.session_state["st_cell"]
i, j = (int(sel[0]), int(sel[1])) if len(sel) == 2 else (0, 0)
i, j = min(i, len(pairs) - 1), min(j, len(layers) - 1)
missing = sum(c is None for row in cells for c in row)

left, right = st.columns([2.4, 1])
with left:
    rel = metric.endswith("_rel")
    fig = figures.matrix_heatmap(values, row_labels, ["stem" if la == "relu" else la for la in layers],
                                 title=f"{metrics[metric]}, {method} matching",
                                 zmax=1.2 if rel else 1.0, selected=(i, j),
                                 big=backend.presenting())
    st.plotly_chart(fig, key="st_matrix", selection_mode="points",
                    on_select=backend.pick_cell("st_matrix", "st_cell"))
    backend.figure_caption("stitching", f"{metrics[metric]}, {method} matching; "
                           f"robust {backend.label(r1)}, standard {backend.label(s1)}")
    inputs = {"kind": "stitching matrix", "metric": metric, "method": method,
              "pairs": [{"front": f, "end": e} for f, e in pairs], "layers": layers,
              "recipe": cell_jobs[0][0].inputs["recipe"]}
    plain_rows = [f"{n}: {backend.label(f)} -> {backend.label(e)}"
                  for n, (f, e) in zip(jobs.STITCH_PAIRS, pairs)]

    def csv_text() -> str:
        lines = ["pair,front,end," + ",".join(layers)]
        for (n, (f, e)), row in zip(zip(jobs.STITCH_PAIRS, pairs), values):
            lines.append(",".join([n, f, e] + ["" if np.isnan(v) else f"{v:.4f}" for v in row]))
        return exports.csv_with_inputs("\n".join(lines) + "\n", inputs)
    stem = f"stitching-{method}-{metric}"
    cap = f"{metrics[metric]}, {method} matching; {PAPER}"
    backend.export_menu(stem, [
        ("Figure, PNG (300 dpi)", lambda: exports.heatmap(values, plain_rows, layers, metrics[metric], inputs, "png", annotate=True, vmax=1.2 if rel else 1.0, cmap="RdYlGn", caption=cap), ".png", "image/png"),
        ("Figure, SVG", lambda: exports.heatmap(values, plain_rows, layers, metrics[metric], inputs, "svg", annotate=True, vmax=1.2 if rel else 1.0, cmap="RdYlGn", caption=cap), ".svg", "image/svg+xml"),
        ("Data, CSV", csv_text, ".csv", "text/csv"),
        ("Cells, JSON", lambda: exports.to_json({"cells": cells, "references": refs}, inputs), ".json", "application/json"),
    ])
    if missing:
        st.caption(f"{missing} of {values.size} cells are not computed yet (blank).")
        if backend.test_set() is None:
            backend.data_missing_message("Computing a stitching cell")
        elif st.button(f"Compute all {missing} missing cells", icon=":material/play_arrow:"):
            with backend.guard():
                for row in cell_jobs:
                    for job in row:
                        if backend.stored(job) is None:
                            backend.run_job(job)
                for job in ref_jobs.values():
                    backend.run_job(job)
            st.rerun()
    st.caption(f"Recipe: {'Adam lr 1e-3, weight decay 1e-4, batch 128, ' + str(RECIPE['epochs']) + ' epochs (lr x0.1 at 1/3, 2/3), ' if method == 'task' else 'least squares, '}"
               f"{RECIPE['train_images']:,} training images; clean accuracy on 10,000 test "
               f"images, robust accuracy under {RECIPE['attack'].describe()} on "
               f"{RECIPE['robust_images']:,}. {PAPER}.")

with right:
    front, end = pairs[i]
    layer = layers[j]
    st.markdown(f"**{jobs.STITCH_PAIRS[i]}** at **{'stem' if layer == 'relu' else layer}**")
    st.caption(f"{backend.label(front)} [..{layer}] → 1x1 conv → {backend.label(end)} [{layer}..]")
    cell = cells[i][j]
    if cell is None:
        st.info("This cell is not computed yet.")
        if backend.test_set() is not None and st.button("Compute this cell", type="primary",
                                                       icon=":material/play_arrow:"):
            with backend.guard():
                backend.run_job(cell_jobs[i][j])
                for s in pairs[i]:
                    backend.run_job(ref_jobs[s])
            st.rerun()
    else:
        m = st.columns(2)
        m[0].metric("Stitched, clean", f"{cell['clean_accuracy']:.1%}")
        rob = cell.get("robust_accuracy")
        m[1].metric("Stitched, robust", "—" if rob is None else f"{rob:.1%}")
        rows = []
        for role, s in (("front", front), ("end", end)):
            r = refs.get(s)
            rows.append({"model": f"{role}: {backend.label(s)}",
                         "clean": None if r is None else r["clean_accuracy"],
                         "robust": None if r is None else r["robust_accuracy"]})
        rows.append({"model": "stitched", "clean": cell["clean_accuracy"], "robust": rob})
        st.dataframe(rows, hide_index=True, column_config={
            "clean": st.column_config.NumberColumn(format="percent"),
            "robust": st.column_config.NumberColumn(format="percent")})
        if cell.get("dm_error") is not None:
            st.metric("Direct-matching error ‖AW−B‖/‖B‖", f"{cell['dm_error']:.3f}",
                      help="Relative least-squares error of the fit on the training data.")
        if cell.get("test_representation_error") is not None:
            st.caption(f"Stitched vs end representation on test images: relative distance "
                       f"{cell['test_representation_error']:.3f}")
        hist = cell.get("history") or {}
        curve = hist.get("curve") or {}
        if curve.get("step"):
            st.plotly_chart(figures.curve(curve["epoch"], {"loss": curve["loss"],
                                                           "accuracy": curve["accuracy"]},
                                          "epoch", "training loss / accuracy"),
                            key="st_curve")
        # the CKA of this layer pair, when the CKA explorer has it stored
        cka_job = jobs.cka_job(backend.model, front, end)
        cka = backend.stored(cka_job)
        if cka is not None and layer in cka["layers_a"] and layer in cka["layers_b"]:
            v = np.asarray(cka["matrix"])[cka["layers_a"].index(layer), cka["layers_b"].index(layer)]
            st.metric("CKA of this layer pair (benign)", f"{float(v):.3f}",
                      help="From the CKA explorer: linear CKA, 10,000 test images.")
        payload = {"pair": jobs.STITCH_PAIRS[i], "front": front, "end": end, "layer": layer,
                   "method": method, "recipe": cell_jobs[i][j].inputs["recipe"],
                   **{k: v for k, v in cell.items() if k != "history"}}
        st.download_button("Cell as JSON", json.dumps(payload, indent=1, default=float),
                           f"stitch-{front}-{end}-{layer}-{method}.json", "application/json",
                           icon=":material/download:")
backend.publish(["st_cell"])
