"""CKA explorer: layer x layer similarity within and across models, benign or adversarial."""
import numpy as np
import streamlit as st

from core import backend, exports, figures, jobs, views
from core.cka import CKAResult

PAGE = "cka"
PAPER = ("Cianfarani, Bhagoji, Sehwag, Zhao, Zheng, Mittal: *Understanding Robust Learning "
         "through the Lens of Representation Similarities*, NeurIPS 2022")

backend.page_header("CKA explorer", "How similar are the representations of two layers? Linear CKA with the unbiased "
           "minibatch HSIC estimator (Nguyen et al. 2021) over CIFAR-10 test images. "
           f"After {PAPER}.")

a, b = backend.selected("a"), backend.selected("b")
name = {"A": backend.label(a), "B": backend.label(b)}
spec = {"A": a, "B": b}

backend.url_state("cka_view", "Explore", ["Explore", "Paper view"])
with st.container(key="settings"):
    view = st.segmented_control("View", ["Explore", "Paper view"], key="cka_view",
                                label_visibility="collapsed")
if view is None:
    view = "Explore"
big = backend.presenting()

with st.container(border=True, key="settings_cka"):
    c1, c2, c3, c4, c5 = st.columns([1.2, 1, 1, 1, 1])
    if view == "Explore":
        backend.url_state("cka_pair", "A vs B", ["A vs B", "A vs A", "B vs B", "B vs A"])
        pair = c1.selectbox("Compare", ["A vs B", "A vs A", "B vs B", "B vs A"], key="cka_pair",
                            help="A and B are the models chosen in the sidebar.")
    backend.url_state("cka_in_a", "benign", list(jobs.INPUT_CHOICES))
    backend.url_state("cka_in_b", "benign", list(jobs.INPUT_CHOICES))
    in_a = c2.selectbox("Inputs, first side" if view == "Explore" else "Inputs",
                        list(jobs.INPUT_CHOICES), key="cka_in_a", format_func=jobs.INPUT_LABELS.get,
                        help="Benign test images, or PGD adversarial examples (Linf 8/255, "
                             "step 2/255, or L2 1.0, step 0.1; 20 steps, random start).")
    if view == "Explore":
        in_b = c3.selectbox("Inputs, second side", list(jobs.INPUT_CHOICES), key="cka_in_b",
                            format_func=jobs.INPUT_LABELS.get)
        backend.url_state("cka_against", "self", ["self", "a", "b"])
        against = c4.selectbox("Adversarial against", ["self", "a", "b"], key="cka_against",
                               format_func={"self": "each side's own model", "a": "first model",
                                            "b": "second model"}.get,
                               disabled=in_a == "benign" and in_b == "benign")
    else:
        in_b, against = in_a, "self"
    backend.url_state("cka_layers", "blocks", list(jobs.LAYER_SETS))
    layers = c5.selectbox("Layers", list(jobs.LAYER_SETS), key="cka_layers",
                          format_func={"blocks": "block outputs", "all": "every layer"}.get,
                          help="Block outputs: stem, 8 residual blocks, pool, logits. Every "
                               "layer: each conv, batch norm, ReLU, pool and linear layer.")
    d1, d2, d3 = st.columns([1, 1, 2.2])
    backend.url_state("cka_n", 10_000, [1000, 2000, 5000, 10_000])
    n = d1.select_slider("Images", [1000, 2000, 5000, 10_000], key="cka_n")
    backend.url_state("cka_kernel", "linear", ["linear", "rbf"])
    kernel = d2.selectbox("Kernel", ["linear", "rbf"], key="cka_kernel",
                          format_func={"linear": "linear", "rbf": "RBF (0.8 x median)"}.get)
backend.publish(["cka_view", "cka_pair", "cka_in_a", "cka_in_b", "cka_against", "cka_layers",
                 "cka_n", "cka_kernel"])


def load_or_offer(job: jobs.Job, key: str) -> CKAResult | None:
    """The stored result, or a button that computes it (nothing runs unasked)."""
    value = backend.stored(job)
    if value is None:
        if backend.test_set() is None:
            backend.data_missing_message("Computing this view")
            return None
        if not st.button(f"Compute: {job.label}", key=key, type="primary",
                         icon=":material/play_arrow:"):
            st.caption("Not computed yet. Results are stored: each view is computed once.")
            return None
        value = backend.run_job(job)
    return CKAResult.from_dict(value)


def describe_pair(res: CKAResult, i: int, j: int, pa, pb) -> None:
    with st.container(border=True):
        st.markdown(f"**{res.layers_a[i]}** × **{res.layers_b[j]}**")
        m1, m2 = st.columns(2)
        m1.metric("CKA", f"{res.matrix[i, j]:.3f}")
        spread = res.spread[i, j]
        m2.metric("Spread over batches", "n/a" if np.isnan(spread) else f"± {spread:.3f}",
                  help=f"Standard deviation of the per-batch CKA over {res.n_batches} batches "
                       f"of {res.batch_size} images.")
        st.caption(f"{name_of(res, 'a')}: {pa.describe(res.layers_a[i])}")
        st.caption(f"{name_of(res, 'b')}: {pb.describe(res.layers_b[j])}")


def name_of(res: CKAResult, side: str) -> str:
    ident = res.model_a if side == "a" else res.model_b
    return backend.label(ident["name"]) if ident["name"] in backend.model_specs() else ident["name"]


def downloads(res: CKAResult, job: jobs.Job, title: str, stem: str, row: str, col: str) -> None:
    inputs = {"kind": job.kind, **job.inputs}
    caption = f"{title}; {res.n} images; {views.PAPERS[PAGE]}"
    backend.export_menu(stem, [
        ("Figure, PNG (300 dpi)", lambda: exports.heatmap(res.matrix, res.layers_a, res.layers_b, title, inputs, "png", row, col, caption=caption), ".png", "image/png"),
        ("Figure, SVG", lambda: exports.heatmap(res.matrix, res.layers_a, res.layers_b, title, inputs, "svg", row, col, caption=caption), ".svg", "image/svg+xml"),
        ("Data, CSV", lambda: exports.csv_with_inputs(res.to_csv(), inputs), ".csv", "text/csv"),
        ("Data, JSON", lambda: exports.to_json(res.to_dict(), inputs), ".json", "application/json"),
    ])


with backend.guard():
    if view == "Explore":
        first, second = pair.split(" vs ")
        job = views.cka_jobs(backend.model, backend.view_settings(PAGE))[0]
        res = load_or_offer(job, "cka_compute")
        if res is not None:
            backend.url_state("cka_cell", [0, 0])
            cell = st.session_state["cka_cell"]
            i, j = (int(cell[0]), int(cell[1])) if len(cell) == 2 else (0, 0)
            i, j = min(i, len(res.layers_a) - 1), min(j, len(res.layers_b) - 1)
            left, right = st.columns([2.3, 1])
            title = (f"{name[first]} ({jobs.INPUT_LABELS[in_a]}) vs "
                     f"{name[second]} ({jobs.INPUT_LABELS[in_b]})")
            fig = figures.cka_heatmap(res.matrix, res.layers_a, res.layers_b, title,
                                      name[first], name[second], res.spread, selected=(i, j),
                                      big=big)
            left.plotly_chart(fig, key="cka_heatmap", selection_mode="points",
                              on_select=backend.pick_cell("cka_heatmap", "cka_cell"))
            with right:
                st.markdown("**Layer pair** (click a cell)")
                describe_pair(res, i, j, backend.model(spec[first]), backend.model(spec[second]))
                st.caption(f"{res.n} images, batches of {res.batch_size}, {res.kernel} kernel, "
                           f"unbiased HSIC; computed in {res.seconds:.0f} s.")
                downloads(res, job, title, f"cka-{first}-{second}-{in_a}-{in_b}", name[first],
                          name[second])
            left.caption(f"{title} · {views.PAPERS[PAGE]}")
            backend.publish(["cka_cell"])
    else:
        st.markdown(f"**Robust:** {name['A']} · **Standard:** {name['B']} · inputs: "
                    f"{jobs.INPUT_LABELS[in_a]} (each model attacked on its own)")
        specs = [("Standard – standard", b, b), ("Robust – robust", a, a), ("Standard – robust", b, a)]
        paper_jobs = views.cka_jobs(backend.model, backend.view_settings(PAGE))
        panels, results = [], []
        for (title, x, y), job in zip(specs, paper_jobs):
            res = load_or_offer(job, f"cka_paper_{title}")
            if res is None:
                st.stop()
            results.append(res)
            panels.append({"matrix": res.matrix, "layers_a": res.layers_a, "layers_b": res.layers_b,
                           "title": f"{title}<br><sup>{backend.label(x)} vs {backend.label(y)}</sup>",
                           "name_a": backend.label(x), "name_b": backend.label(y),
                           "spread": res.spread})
        st.plotly_chart(figures.cka_panels(panels, big=big), key="cka_panels")
        items = [{"matrix": p["matrix"], "rows": p["layers_a"], "cols": p["layers_b"],
                  "title": t, "row_title": p["name_a"], "col_title": p["name_b"]}
                 for p, (t, _, _) in zip(panels, specs)]
        inputs = {"kind": "cka paper view", "panels": [j.inputs for j in paper_jobs]}
        cap = f"{views.PAPERS[PAGE]}; {jobs.INPUT_LABELS[in_a]} inputs"
        backend.export_menu(f"cka-paper-{in_a}", [
            ("Figure, PNG (300 dpi)", lambda: exports.panels(items, inputs, "png", cap), ".png", "image/png"),
            ("Figure, SVG", lambda: exports.panels(items, inputs, "svg", cap), ".svg", "image/svg+xml"),
            ("Data, JSON", lambda: exports.to_json([r.to_dict() for r in results], inputs), ".json",
             "application/json")])
        cross = results[2]
        k = min(len(cross.layers_a), len(cross.layers_b))
        st.plotly_chart(figures.diagonal_profile(
            [("standard vs robust, same layer", cross.layers_a[:k], np.diag(cross.matrix)[:k])],
            big=big), key="cka_diag")
        off = lambda m: float(np.mean(m[~np.eye(len(m), dtype=bool)]))  # noqa: E731
        c1, c2, c3 = st.columns(3)
        c1.metric("Mean off-diagonal CKA, standard", f"{off(results[0].matrix):.2f}")
        c2.metric("Mean off-diagonal CKA, robust", f"{off(results[1].matrix):.2f}",
                  help="Cianfarani et al.: robust networks lose the block structure; distant "
                       "layers stay similar.")
        c3.metric("Mean CKA, standard vs robust (same layer)",
                  f"{float(np.mean(np.diag(cross.matrix)[:k])):.2f}")
        backend.figure_caption(PAGE, f"Robust: {name['A']} · standard: {name['B']} · "
                                     f"{jobs.INPUT_LABELS[in_a]} inputs · {n:,} test images")
