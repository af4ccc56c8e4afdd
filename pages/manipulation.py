"""Feature manipulation: visualise, find, add and blend the features of robust representations."""
from ui.handover import setup

setup()   # before the heavy imports: a cold server's deep link hands over at once

import streamlit as st  # noqa: E402
from core import data, figures, inversion, jobs, views  # noqa: E402
from ui import backend, page, picker, presentation, sidebar, state, uploads  # noqa: E402
from ui.gallery import gallery, tile_label  # noqa: E402

PAGE = "manipulation"
page.header(PAGE)

a, b = sidebar.chosen("a"), sidebar.chosen("b")
specs = [a, b]
with page.guard():          # a model that does not load, or has no linear head: a sentence
    probe_a = backend.model(a)
    feats = inversion.browser_features(probe_a)
    backend.model(b)
CLASSES = probe_a.classes
big = presentation.presenting()
SIZE = 230 if big else 200
setting = views.page_settings(PAGE)
_feat = st.session_state.get("mf_feat") or ""
ADD_INDEX = int(_feat[1:]) if _feat[1:].isdigit() else feats[0]   # the browser's feature


def sample_items() -> list[dict]:
    """The shipped samples, the photos and this session's uploads, for model A."""
    return [it for source in ("samples", "photos", "upload")
            for it in picker.items(source, probe_a.kind, probe_a.input_size)]


def image_arg(key: str):
    """A picked image as a job takes it: a gallery key, an upload's pixels."""
    return uploads.images()[key] if key in uploads.images() else key


def narrower(spec: str) -> str:
    return (f"{backend.label(spec)}'s representation has {backend.model(spec).representation_size} "
            "components: this one is not among them.")


# ------------------------------------------------------------------ browser

def browser() -> None:
    st.markdown(f"Features of **{backend.label(a)}**: for each class, the four components of "
                "the representation with the largest weight towards it, each maximised from "
                "noise. Click one.")
    grid_job = inversion.feature_grid_job(backend.model, a, feats)
    grid = page.result(grid_job, f"Visualise {len(feats)} features", "mf_grid", type="primary")
    if grid is None:
        return
    towards = {i: inversion.feature_class(probe_a, i) for i in grid["indices"]}
    items = [{"key": f"f{i}", "image": img, "title": f"feature {i} (→ {towards[i]})",
              "caption": f"{i} · {tile_label(towards[i])}"}
             for i, img in zip(grid["indices"], grid["images"])]
    state.seed(PAGE, "mf_feat", [it["key"] for it in items], default=items[0]["key"])
    gallery(items, "mf_feat", size=56, label="features")
    index = int(st.session_state["mf_feat"][1:])
    st.subheader(f"Feature {index} (strongest towards {inversion.feature_class(probe_a, index)})")
    c = st.columns([1, 1, 2.2])
    shown = inversion.with_component(backend.model, {"a": a, "b": b}, index)
    vis_jobs = [inversion.feature_grid_job(backend.model, s, [index]) for s in shown]
    vis = page.results(vis_jobs, "Visualise in both models", "mf_vis", c[0], icon=None) or []
    for k, s in enumerate(specs):
        c[k].markdown(f"**{backend.label(s)}**")
        if s not in shown:
            c[k].caption(narrower(s))
        elif vis:
            c[k].image(figures.upscale(vis[shown.index(s)]["images"][0], 6), width=SIZE)
    with c[2]:
        top_images(index)
    page.caption(PAGE, f"feature {index} of {backend.label(a)}, maximised from noise")
    page.export_menu(f"features-{a}", page.optimisation_files(
        {"kind": grid_job.kind, **grid_job.inputs},
        {"All features, PNG": (grid["images"], 4, [str(i) for i in grid["indices"]])}))


def top_images(index: int) -> None:
    folder = state.folder(st, PAGE, "mf_folder", a)
    if folder is None and probe_a.kind != "cifar10":
        st.info(f"Top-activating images of {backend.label(a)} come from its own data set "
                f"({data.KIND_NAMES[probe_a.kind]} images): name an image folder above.",
                icon=":material/info:")
        return
    with page.guard():
        test = backend.test_set() if folder is None else jobs.image_folder(
            "Top-activating images", folder, probe_a)
        top_job = inversion.top_images_job(backend.model, a, feats, folder=folder,
                                           where=test if folder else None)
    if test is None:          # their indices are stored, the images are the data set's
        page.need_data("Showing the top-activating test images", "mf-top")
        return
    top = page.result(top_job, "Find the top-activating images", "mf_top", icon=None)
    entry = None if top is None else top.get(str(index))
    if entry is None:
        return
    for title, key in (("Most activating", "top"), ("Least activating", "bottom")):
        st.caption(f"{title} images ({backend.label(a)})")
        st.image([figures.upscale(test[int(i)][0], 2 if folder is None else 1, 128)
                  for i in entry[key]],
                 caption=[f"{float(v):.2f}" for v in entry[key + "_values"]])


# ------------------------------------------------------------------ addition

def addition() -> None:
    st.markdown("Push one component of the representation up, starting from a real image and "
                "staying close to it: in a robust model the feature appears in the image.")
    items = sample_items()
    c = st.columns([3, 1])
    with c[0]:
        state.seed(PAGE, "mf_add_img", [it["key"] for it in items])
        gallery(items, "mf_add_img", size=48, label="images")
    index = state.number(c[1], PAGE, "mf_add_index", default=ADD_INDEX)
    found = picker.chosen(st.session_state["mf_add_img"], probe_a.input_size)
    if found is None:
        return
    shown = inversion.with_component(backend.model, {"a": a, "b": b}, int(index))
    for s in specs:
        if s not in shown:
            st.caption(narrower(s))
    if not shown:
        return
    image = image_arg(st.session_state["mf_add_img"])
    add_jobs = [inversion.add_feature_job(backend.model, s, image, int(index)) for s in shown]

    def columns() -> list:
        cols = st.columns(3)
        cols[0].markdown("**Original**")
        cols[0].image(figures.upscale(found[0], 6), width=SIZE)
        for k, s in enumerate(shown):
            cols[k + 1].markdown(f"**{backend.label(s)}**")
        return cols
    results = page.results(add_jobs, f"Add feature {index}", "mf_add_go", type="primary",
                           icon=":material/add:", live=lambda: (columns()[1:], 6, SIZE))
    if results is None:
        return
    cols = columns()
    for k, (s, r) in enumerate(zip(shown, results)):
        cols[k + 1].image(figures.upscale(r["images"][0], 6), width=SIZE)
        cols[k + 1].caption(f"feature {index}: {r['before']:.2f} → **{r['after']:.2f}**"
                            + (f" · predicted {backend.model(s).classes[r['predicted']]}"
                               if "predicted" in r else ""))
    page.caption(PAGE, f"feature {index} added to {found[1]}")
    inputs = {"kind": "add_feature", "jobs": [j.inputs for j in add_jobs]}
    page.export_menu(f"add-feature-{index}", page.optimisation_files(
        inputs, {"Before and after, PNG": ([found[0]] + [r["images"][0] for r in results], 8,
                                           ["original"] + [backend.label(s) for s in shown])},
        {f"Optimisation of {backend.label(s)}, GIF": [f[1][0] for f in r["frames"]]
         for s, r in zip(shown, results)}))


# ------------------------------------------------------------------ interpolation

def interpolation() -> None:
    st.markdown("Invert (1 − t)·R(a) + t·R(b), each frame starting from the same mix in pixel "
                "space: the robust model moves between the images through meaningful shapes.")
    names = {it["key"]: it["title"] for it in sample_items()}
    keys = list(names)
    with st.container(key="settings"):      # on a projector: the two strips alone
        c = st.columns([1, 1, 1], vertical_alignment="bottom")
        ia = state.selectbox(c[0], PAGE, "mf_ia", keys, format_func=names.get)
        ib = state.selectbox(c[1], PAGE, "mf_ib", keys, format_func=names.get)
    ijobs = [inversion.interpolation_job(backend.model, s, image_arg(ia), image_arg(ib))
             for s in specs]

    def columns() -> tuple[list, int, int]:
        live = st.columns(2)
        for col, s in zip(live, specs):
            col.markdown(f"**{backend.label(s)}**, computing...")
        return live, 6, SIZE
    results = page.results(ijobs, "Interpolate", "mf_interp", type="primary",
                           icon=":material/linear_scale:", live=columns)
    if results is None:
        return
    n = len(results[0]["images"])
    state.seed(PAGE, "mf_t", list(range(n)))
    with st.container(key="settings_frame"):
        t = st.slider("Frame", 0, n - 1, key="mf_t")
    for s, r in zip(specs, results):
        st.markdown(f"**{backend.label(s)}** ({backend.model_kind(s)})")
        st.image([figures.upscale(im, 3) for im in r["images"]],
                 caption=[("▶ " if k == t and not big else "") + f"t = {k / (n - 1):.2f}"
                          for k in range(n)])
    page.caption(PAGE, f"interpolation from {names[ia]} to {names[ib]}")
    inputs = {"kind": "interpolation", "jobs": [j.inputs for j in ijobs]}
    page.export_menu(f"interpolation-{ia}-{ib}", page.optimisation_files(
        inputs, {f"Strip, {backend.label(s)}, PNG": (r["images"], 6, None)
                 for s, r in zip(specs, results)},
        {f"Animation, {backend.label(s)}, GIF": list(r["images"]) + list(r["images"])[::-1]
         for s, r in zip(specs, results)}))


# ------------------------------------------------------------------ misclassification

def misclassified() -> list[dict]:
    if probe_a.kind == "other":
        st.info(f"No labelled images of {backend.label(a)}'s classes ship with the app.",
                icon=":material/info:")
        return []
    test = backend.test_set() if probe_a.kind == "cifar10" else None
    if test is None:
        out = [{"key": s.key, "image": s.image, "label": s.label, "title": f"{s.title} → "
                f"{CLASSES[pred]}", "caption": f"→ {tile_label(CLASSES[pred])}"}
               for s, pred in inversion.misclassified_samples(probe_a)]
        st.caption(f"{backend.label(a)} misclassifies {len(out)} of the 20 shipped samples; the "
                   "full test set gives many more.")
        return out
    outs = page.result(inversion.test_outputs_job(backend.model, a),
                       "Find the misclassified test images", "mf_mis_find", icon=None)
    if outs is None:
        return []
    order, wrong = inversion.misclassified_test(outs)
    st.caption(f"{backend.label(a)} misclassifies {wrong:,} of {len(test):,} test images; "
               f"{len(order)} of them:")
    return [{"key": f"test-{i}", "image": test.images[i].numpy().transpose(1, 2, 0),
             "label": int(test.labels[i]),
             "title": f"test {i}: {CLASSES[int(test.labels[i])]} → "
                      f"{CLASSES[int(outs['predicted'][i])]}",
             "caption": f"→ {tile_label(CLASSES[int(outs['predicted'][i])])}"}
            for i in order]


def misclassification() -> None:
    st.markdown("For a misclassified image: the component contributing most to the wrong "
                "class (last-layer weight × feature), then that component pushed up: what the "
                "model \"sees\".")
    candidates = misclassified()
    if not candidates:
        return
    state.seed(PAGE, "mf_mis", [x["key"] for x in candidates], default=candidates[0]["key"])
    gallery(candidates, "mf_mis", size=48, label="misclassified images")
    cand = next(x for x in candidates if x["key"] == st.session_state["mf_mis"])
    ejob = inversion.explain_job(backend.model, a, cand["key"], cand["label"])
    ex = page.result(ejob, "Explain", "mf_explain", type="primary")
    if ex is None:
        return
    cols = st.columns(4)
    cols[0].markdown(f"**Image**: {CLASSES[ex['label']]}")
    cols[0].image(figures.upscale(cand["image"], 6), width=SIZE)
    cols[1].markdown(f"**Predicted**: {CLASSES[ex['predicted']]} "
                     f"({float(ex['probabilities'][ex['predicted']]):.0%})")
    cols[1].metric("Top component", ex["component"],
                   help=f"contribution to the predicted logit: {ex['contribution']:.2f}")
    cols[2].markdown(f"**Feature {ex['component']} pushed up**")
    cols[2].image(figures.upscale(ex["image"], 6), width=SIZE)
    cols[3].bar_chart(inversion.top_contributions(ex), x="feature", y="contribution",
                      horizontal=True, sort="-contribution", x_label="feature",
                      y_label="contribution to the predicted logit")
    page.caption(PAGE, f"{backend.label(a)} predicts {CLASSES[ex['predicted']]} "
                       f"for a {CLASSES[ex['label']]}")


tabs_setting = setting["mf_tab"]
state.seed(PAGE, "mf_tab", tabs_setting.options)
tabs = st.tabs(list(tabs_setting.options), key="mf_tab", on_change="rerun")
for tab, body in zip(tabs, (browser, addition, interpolation, misclassification)):
    with tab:
        if tab.open:  # only the open tab runs
            with page.guard():
                body()
state.current(PAGE)
state.publish(PAGE, implicit={"mf_add_index": ADD_INDEX})
