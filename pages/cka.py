"""CKA explorer: layer x layer similarity within and across models, benign or adversarial."""
from ui.handover import setup

setup()   # before the heavy imports: a cold server's deep link hands over at once

import numpy as np  # noqa: E402
import streamlit as st  # noqa: E402

from core import cka, exports, figures, views  # noqa: E402
from core.analyses import similarity  # noqa: E402
from core.cka import CKAResult  # noqa: E402
from core.probe import short_names  # noqa: E402
from ui import backend, page, presentation, sidebar, state  # noqa: E402

PAGE = "cka"
page.header(PAGE)

a, b = sidebar.chosen("a"), sidebar.chosen("b")
big = presentation.presenting()
HEIGHT = 470 if big else 540          # the heatmap fits a 1280x720 projector with the header

with st.container(key="settings"):
    top = st.columns([4, 1.3], vertical_alignment="bottom")
    view = state.segmented(top[0], PAGE, "cka_view", label_visibility="collapsed")
    estimator = top[1].popover("Estimator", icon=":material/tune:", width="stretch")
    with st.container(border=True):
        c = st.columns([1.1, 1, 1, 1.1, 1, 1.2, 1.3])
        if view == "Explore":
            state.selectbox(c[0], PAGE, "cka_pair")
        in_a = state.selectbox(c[1], PAGE, "cka_in_a",
                               label="Inputs, first side" if view == "Explore" else "Inputs")
        if view == "Explore":
            in_b = state.selectbox(c[2], PAGE, "cka_in_b")
            state.selectbox(c[3], PAGE, "cka_against",
                            disabled=in_a == "benign" and in_b == "benign")
        state.selectbox(c[4], PAGE, "cka_layers")
        measure = state.selectbox(c[5], PAGE, "cka_measure")
        state.select_slider(c[6], PAGE, "cka_n")
        state.folder(st, PAGE, "cka_folder", a, b)
    with estimator:   # how the chosen measure is estimated
        state.selectbox(st, PAGE, "cka_kernel", disabled=measure != "cka")
        state.selectbox(st, PAGE, "cka_maps")
        state.selectbox(st, PAGE, "cka_passes", disabled=measure != "cka")
settings = state.current(PAGE)
state.publish(PAGE)
name = {"A": backend.label(a), "B": backend.label(b)}
measure = settings["cka_measure"]
scale = figures.Scale(*cka.measure_scale(measure))


def stored_or_offer(job, transposed: bool, key: str) -> CKAResult | None:
    """The stored result, or the one action that gets it (nothing runs unasked)."""
    value = page.result(job, f"Compute: {job.label}", key, type="primary")
    return None if value is None else CKAResult.from_dict(
        cka.transposed_cka(value) if transposed else value)


def describe_pair(res: CKAResult, i: int, j: int, first: str, second: str) -> None:
    with st.container(border=True, key="pair"):
        # the stem's ReLU by the name the figure's axes give it
        a_name, b_name = (("stem" if short_names(ls)[k] == "stem" else ls[k])
                          for ls, k in ((res.layers_a, i), (res.layers_b, j)))
        st.markdown(f"**{a_name}** × **{b_name}**")
        m1, m2 = st.columns(2)
        m1.metric(scale.label, f"{res.matrix[i, j]:.3f}")
        spread = res.spread[i, j]
        if res.measure == "cka":
            m2.metric("Batch spread", "n/a" if np.isnan(spread) else f"± {spread:.3f}",
                      help=f"Standard deviation of the per-batch CKA over {res.n_batches} "
                           f"batches of {res.batch_size} images.")
        st.caption(f"{backend.label(first)}: {backend.model(first).describe(res.layers_a[i])}")
        st.caption(f"{backend.label(second)}: {backend.model(second).describe(res.layers_b[j])}")


def calibration(res: CKAResult, i: int, j: int) -> None:
    """Is this cell's value high? Its permutation null and resampled interval (shipped for
    the default view, else computed on a click), and two standard seeds' value beside it."""
    requests = cka.calibration_requests(backend.model, settings, (i, j))
    if requests is None:
        return
    full, one = requests
    whole = backend.stored(full)
    if whole is not None:
        cal, (r, c) = whole, (i, j)
    elif backend.test_set() is None:   # an extra of the view, not part of it: no data offer
        cal = None
        st.caption("Calibrating this cell (a permutation null and a 95% interval) reads "
                   "CIFAR-10's test images: `python -m core data --download` gets them.")
    else:
        # a click on a cell computes its calibration; opening a view computes nothing
        cal, (r, c) = page.result(one, "Calibrate this cell", "cka_calibrate",
                                  auto=state.picked("cka_cell")), (0, 0)
    if cal is not None:
        st.caption(similarity.describe_calibration(cal, r, c, brief=big))
    baseline = cka.seed_baseline(backend.model, backend.stored, settings, res.layers_a[i],
                                 res.layers_b[j])
    if baseline is not None:
        x, y, seeds = baseline
        st.caption(f"Two standard seeds: {seeds:.3f}" if big else
                   f"Two standard models that differ only in their seed ({backend.label(x)}, "
                   f"{backend.label(y)}), same layers and inputs: {seeds:.3f} (the natural "
                   "baseline).")


def attacked_inputs(job) -> None:
    """A few samples and their attacked versions, with the attacked model's answers."""
    value = page.result(job, f"Show {job.label}", f"cka_examples_{job.key[:12]}")
    if value is None:
        return
    names = value["classes"]
    for row, answers in (("clean", "clean_answers"), ("attacked", "attacked_answers")):
        st.image([figures.upscale(x, 2) for x in value[row]], width=64,
                 caption=[f"{row}: {names[k]}" for k in value[answers]])
    st.caption(f"{job.label}. Under each image, the model's answer; the true classes: "
               f"{', '.join(names[k] for k in value['labels'])}.")


def heatmap_exports(res: CKAResult, job, title: str, stem: str, row: str, col: str) -> None:
    inputs = {"kind": job.kind, **job.inputs}
    cap = f"{title}; {res.n} images; {views.page(PAGE).paper}"
    page.export_menu(stem, page.figure_files(lambda fmt: exports.heatmap(
        res.matrix, res.layers_a, res.layers_b, title, inputs, fmt, row, col, caption=cap)) + [
        ("Data, CSV", lambda: exports.csv_with_inputs(res.to_csv(), inputs), ".csv", "text/csv"),
        ("Data, JSON", lambda: exports.to_json(res.to_dict(), inputs), ".json", "application/json"),
    ])


with page.guard():
    requests = cka.cka_requests(backend.model, settings)
    cka_jobs = [job for job, _ in requests]
    pairs = cka.cka_pairs(backend.model, settings)
    inputs_label = cka.INPUT_LABELS
    if view == "Explore":
        (first, second), (job, transposed) = pairs[0], requests[0]
        res = stored_or_offer(job, transposed, "cka_compute")
        if res is not None:
            i, j = state.cell(settings, "cka_cell", len(res.layers_a), len(res.layers_b))
            models, inputs = cka.cka_title(backend.label(first), backend.label(second), settings)
            title = f"{models}: {inputs}"
            left, right = st.columns([2.3, 1])
            fig = figures.cka_heatmap(res.matrix, res.layers_a, res.layers_b,
                                      f"{models}<br><sup>{inputs}</sup>",
                                      backend.label(first), backend.label(second), res.spread,
                                      selected=(i, j), big=big, height=HEIGHT, scale=scale)
            left.plotly_chart(fig, key="cka_heatmap", selection_mode="points",
                              on_select=state.pick_cell("cka_heatmap", "cka_cell"))
            with right:
                st.markdown("**Layer pair** (click a cell)")
                describe_pair(res, i, j, first, second)
                calibration(res, i, j)
                st.caption(cka.result_caption(res))
                heatmap_exports(res, job, title, f"cka-{settings['cka_pair'].replace(' ', '')}-"
                                f"{settings['cka_in_a']}-{settings['cka_in_b']}",
                                backend.label(first), backend.label(second))
            with left:
                page.caption(PAGE, title)
    else:
        robust, standard, roles = cka.paper_roles(backend.model, settings)
        inputs_text = inputs_label[settings["cka_in_a"]] + (
            "" if settings["cka_in_a"] == "benign" else " (each model attacked on its own)")
        if roles:
            role_r, role_s = "robust", "standard"
            titles = ["Standard – standard", "Robust – robust", "Standard – robust"]
            st.markdown(f"**Robust:** {backend.label(robust)} · **Standard:** "
                        f"{backend.label(standard)} · inputs: {inputs_text}")
        else:   # the paper's roles do not fit: the models' own names instead
            role_r, role_s = backend.label(robust), backend.label(standard)
            titles = [f"{role_s} – itself", f"{role_r} – itself", f"{role_s} – {role_r}"]
            st.markdown(f"The paper compares a robust model with a standard one; {name['A']} and "
                        f"{name['B']} are both {backend.model_kind(robust)}. Inputs: {inputs_text}")
        results = []
        for k, (job, transposed) in enumerate(requests):
            res = stored_or_offer(job, transposed, f"cka_paper_{k}")
            if res is None:
                st.stop()
            results.append(res)
        panels = [{"matrix": r.matrix, "layers_a": r.layers_a, "layers_b": r.layers_b,
                   "title": f"{t}<br><sup>{backend.label(x)} vs {backend.label(y)}</sup>",
                   "name_a": backend.label(x), "name_b": backend.label(y), "spread": r.spread}
                  for t, (x, y), r in zip(titles, pairs, results)]
        st.plotly_chart(figures.cka_panels(panels, big=big, height=HEIGHT - 40, scale=scale),
                        key="cka_panels")
        page.caption(PAGE, (f"{scale.label} · " if measure != "cka" else "") +
                           (f"Robust: {backend.label(robust)} · standard: "
                            f"{backend.label(standard)} · " if roles else "") +
                           f"{inputs_label[settings['cka_in_a']]} inputs · "
                           f"{settings['cka_n']:,} test images")
        summary = cka.paper_summary(*results)
        c1, c2, c3 = st.columns(3)
        c1.metric(f"Mean off-diagonal {scale.label}, {role_s}", f"{summary['within_first']:.2f}")
        c2.metric(f"Mean off-diagonal {scale.label}, {role_r}", f"{summary['within_second']:.2f}",
                  help="Cianfarani et al.: robust networks lose the block structure; distant "
                       "layers stay similar.")
        c3.metric(f"Mean {scale.label}, {role_s} vs {role_r} (same layer)",
                  f"{summary['same_layer']:.2f}")
        st.plotly_chart(figures.diagonal_profile([(f"{role_s} vs {role_r}, same layer",
                                                   summary["layers"], summary["diagonal"])],
                                                 big=big), key="cka_diag")
        items = [{"matrix": p["matrix"], "rows": p["layers_a"], "cols": p["layers_b"],
                  "title": t, "row_title": p["name_a"], "col_title": p["name_b"]}
                 for p, t in zip(panels, titles)]
        inputs = {"kind": "cka paper view", "panels": [j.inputs for j in cka_jobs]}
        cap = f"{views.page(PAGE).paper}; {inputs_label[settings['cka_in_a']]} inputs"
        page.export_menu(f"cka-paper-{settings['cka_in_a']}", page.figure_files(
            lambda fmt: exports.panels(items, inputs, fmt, cap)) + [
            ("Data, JSON", lambda: exports.to_json([r.to_dict() for r in results], inputs), ".json",
             "application/json")])

# below the figure, which draws first; a talk shows the figure alone
with page.guard():
    shown = [] if big else cka.example_requests(backend.model, settings)
if shown:
    with st.expander("What the attacked inputs look like", icon=":material/image:"):
        for example_job in shown:
            attacked_inputs(example_job)
