"""Feature manipulation: visualise, find, add and blend the features of robust representations."""
from ui.handover import setup

setup()   # before the heavy imports: a cold server's deep link hands over at once

import numpy as np  # noqa: E402
import streamlit as st  # noqa: E402
from core import data, exports, figures, inversion, jobs, views  # noqa: E402
from ui import backend, page, presentation, sidebar, state, uploads  # noqa: E402
from ui.gallery import gallery, tile_label  # noqa: E402

PAGE = "manipulation"
page.header(PAGE, "Feature manipulation",
            "Visualise, find, add and blend the features of a representation",
            "Gradient descent in pixel space, with no image prior: a robust model's "
            "representation is close to human-meaningful features, a standard model's is not. "
            "The last ReLU is an identity in the backward pass (\"fake ReLU\").")

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


def feature_class(index: int) -> str:
    w = probe_a.head.weight.detach().float().cpu()
    return CLASSES[int(w[:, index].argmax())]


def sample_items() -> list[dict]:
    pool = (backend.samples(probe_a.kind) or backend.samples()) + backend.photos(probe_a.input_size)
    return [{"key": s.key, "image": s.image, "title": s.title,
             "caption": s.title.split(" #")[0].split(" (")[0]} for s in pool] + \
        uploads.gallery_items()


def run_pair(job_list: list, cols: list) -> list:
    """Two optimisation jobs side by side: frames appear where the results will stand,
    and are replaced by them (no stale previews)."""
    slots = [c.empty() for c in cols]
    notes = [c.empty() for c in cols]

    def show(i, e):
        if e.preview is not None:
            slots[i].image(figures.upscale(e.preview[0], 6), width=SIZE)
        if e.preview is not None or int(e.done) % 25 == 0:
            notes[i].caption(f"step {int(e.done)}/{int(e.total)}")
    results = backend.run_live(job_list, show)
    for slot, note in zip(slots, notes):
        slot.empty()
        note.empty()
    return results


def narrower(spec: str) -> str:
    return (f"{backend.label(spec)}'s representation has {backend.model(spec).representation_size} "
            "components: this one is not among them.")


def offer(job_list: list, label: str, key: str, icon: str) -> list | None:
    """Stored results, or a button that computes them (nothing runs unasked)."""
    if all(backend.stored(j) is not None for j in job_list):
        return [backend.stored(j) for j in job_list]
    if not page.button(label, job_list, type="primary", key=key, icon=icon):
        return None
    return job_list


# ------------------------------------------------------------------ browser

def browser() -> None:
    st.markdown(f"Features of **{backend.label(a)}**: for each class, the four components of "
                "the representation with the largest weight towards it, each maximised from "
                "noise. Click one.")
    grid_job = inversion.feature_grid_job(backend.model, a, feats)
    grid = backend.stored(grid_job)
    if grid is None:
        if not page.button(f"Visualise {len(feats)} features", [grid_job], type="primary",
                           key="mf_grid", icon=":material/play_arrow:"):
            return
        grid = backend.run_job(grid_job)
    items = [{"key": f"f{i}", "image": img, "title": f"feature {i} (→ {feature_class(i)})",
              "caption": f"{i} · {tile_label(feature_class(i))}"}
             for i, img in zip(grid["indices"], grid["images"])]
    state.seed(PAGE, "mf_feat", [it["key"] for it in items], default=items[0]["key"])
    gallery(items, "mf_feat", size=56, label="features")
    index = int(st.session_state["mf_feat"][1:])
    st.subheader(f"Feature {index} (strongest towards {feature_class(index)})")
    c = st.columns([1, 1, 2.2])
    shown = inversion.with_component(backend.model, {"a": a, "b": b}, index)
    vis_jobs = [inversion.feature_grid_job(backend.model, s, [index]) for s in shown]
    vis = [backend.stored(j) for j in vis_jobs]
    if any(v is None for v in vis) and page.button("Visualise in both models", vis_jobs, c[0],
                                                   key="mf_vis"):
        for j in vis_jobs:
            backend.run_job(j)
        st.rerun()   # drawn again from the store: no spent button, status boxes or offset
    for k, s in enumerate(specs):
        c[k].markdown(f"**{backend.label(s)}**")
        if s not in shown:
            c[k].caption(narrower(s))
        elif vis[shown.index(s)] is not None:
            c[k].image(figures.upscale(vis[shown.index(s)]["images"][0], 6), width=SIZE)
    with c[2]:
        top_images(index)
    page.caption(PAGE, f"feature {index} of {backend.label(a)}, maximised from noise")
    page.export_menu(f"features-{a}", [
        ("All features, PNG", lambda: exports.image_strip(
            grid["images"], {"kind": grid_job.kind, **grid_job.inputs}, 4,
            [str(i) for i in grid["indices"]]), ".png", "image/png")])


def top_images(index: int) -> None:
    # models of another data set rank the images of a folder of their own images
    folder = None
    if probe_a.kind != "cifar10" or state.value(PAGE, "mf_folder"):
        folder = state.text(st, PAGE, "mf_folder", placeholder="/data/imagenet/val") or None
        if folder is None:
            st.info(f"Top-activating images of {backend.label(a)} come from its own data set "
                    f"({data.KIND_NAMES[probe_a.kind]} images): name an image folder above.",
                    icon=":material/info:")
            return
    with page.guard():
        test = backend.test_set() if folder is None else jobs.image_folder(
            "Top-activating images", folder, probe_a)
        top_job = inversion.top_images_job(backend.model, a, feats, folder=folder,
                                      where=test if folder else None)
    top = backend.stored(top_job)
    if test is None:
        page.need_data("Showing the top-activating test images", "mf-top")
        return
    if top is None:
        if not st.button("Find the top-activating images", key="mf_top"):
            return
        top = backend.run_job(top_job)
    entry = top.get(str(index))
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
    found = data.image_for(st.session_state["mf_add_img"], uploads.images(), probe_a.input_size)
    if found is None:
        return
    shown = inversion.with_component(backend.model, {"a": a, "b": b}, int(index))
    for s in specs:
        if s not in shown:
            st.caption(narrower(s))
    if not shown:
        return
    add_jobs = [inversion.add_feature_job(backend.model, s, found[0], int(index)) for s in shown]
    todo = offer(add_jobs, f"Add feature {index}", "mf_add_go", ":material/add:")
    if todo is None:
        return
    cols = st.columns(3)
    cols[0].markdown("**Original**")
    cols[0].image(figures.upscale(found[0], 6), width=SIZE)
    for k, s in enumerate(shown):
        cols[k + 1].markdown(f"**{backend.label(s)}**")
    results = run_pair(add_jobs, cols[1:1 + len(shown)]) if todo is add_jobs else todo
    for k, (s, r) in enumerate(zip(shown, results)):
        cols[k + 1].image(figures.upscale(r["images"][0], 6), width=SIZE)
        cols[k + 1].caption(f"feature {index}: {r['before']:.2f} → **{r['after']:.2f}**"
                            + (f" · predicted {backend.model(s).classes[r['predicted']]}"
                               if "predicted" in r else ""))
    page.caption(PAGE, f"feature {index} added to {found[1]}")
    inputs = {"kind": "add_feature", "jobs": [j.inputs for j in add_jobs]}
    page.export_menu(f"add-feature-{index}", [
        ("Before and after, PNG", lambda: exports.image_strip(
            [found[0]] + [r["images"][0] for r in results], inputs, 8,
            ["original"] + [backend.label(s) for s in shown]), ".png", "image/png"),
        (f"Optimisation of {backend.label(a)}, GIF", lambda: exports.gif(
            [f[1][0] for f in results[0]["frames"]], inputs), ".gif", "image/gif")])


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
    images = uploads.images()
    ijobs = [inversion.interpolation_job(backend.model, s, data.image_for(ia, images, size)[0],
                                    data.image_for(ib, images, size)[0])
             for s, size in ((s, backend.model(s).input_size) for s in specs)]
    todo = offer(ijobs, "Interpolate", "mf_interp", ":material/linear_scale:")
    if todo is None:
        return
    if todo is ijobs:
        live = st.columns(2)
        for col, s in zip(live, specs):
            col.markdown(f"**{backend.label(s)}**, computing...")
        results = run_pair(ijobs, live)
        st.rerun()      # draw the finished interpolation alone, from the store
    results = todo
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
    page.export_menu(f"interpolation-{ia}-{ib}", [
        (f"Strip, {backend.label(s)}, PNG", (lambda r=r: exports.image_strip(
            r["images"], inputs, 6)), f"-{k}.png", "image/png")
        for k, (s, r) in enumerate(zip(specs, results))] + [
        (f"Animation, {backend.label(s)}, GIF", (lambda r=r: exports.gif(
            list(r["images"]) + list(r["images"])[::-1], inputs)), f"-{k}.gif", "image/gif")
        for k, (s, r) in enumerate(zip(specs, results))])


# ------------------------------------------------------------------ misclassification

def misclassified() -> list[dict]:
    if probe_a.kind == "other":
        st.info(f"No labelled images of {backend.label(a)}'s classes ship with the app.",
                icon=":material/info:")
        return []
    test = backend.test_set() if probe_a.kind == "cifar10" else None
    if test is None:
        out = [{"key": s.key, "image": s.image, "label": s.label,
                "title": f"{s.title} → {CLASSES[pred]}", "caption": f"→ {tile_label(CLASSES[pred])}"}
               for s, pred in inversion.misclassified_samples(probe_a)]
        st.caption(f"{backend.label(a)} misclassifies {len(out)} of the 20 shipped samples; the "
                   "full test set gives many more.")
        return out
    out_job = inversion.test_outputs_job(backend.model, a)
    outs = backend.stored(out_job)
    if outs is None:
        if not st.button("Find the misclassified test images", key="mf_mis_find"):
            return []
        outs = backend.run_job(out_job)
    wrong = np.nonzero((outs["predicted"] != outs["labels"]).numpy())[0]
    order = np.random.default_rng(0).permutation(wrong)[:40]
    st.caption(f"{backend.label(a)} misclassifies {len(wrong):,} of {len(test):,} test images; "
               "40 of them:")
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
    ejob = inversion.explain_job(backend.model, a, cand["image"], cand["label"])
    ex = backend.stored(ejob)
    if ex is None:
        if not page.button("Explain", [ejob], type="primary", key="mf_explain"):
            return
        ex = backend.run_job(ejob)
    cols = st.columns(4)
    cols[0].markdown(f"**Image**: {CLASSES[ex['label']]}")
    cols[0].image(figures.upscale(cand["image"], 6), width=SIZE)
    cols[1].markdown(f"**Predicted**: {CLASSES[ex['predicted']]} "
                     f"({float(ex['probabilities'][ex['predicted']]):.0%})")
    cols[1].metric("Top component", ex["component"],
                   help=f"contribution to the predicted logit: {ex['contribution']:.2f}")
    cols[2].markdown(f"**Feature {ex['component']} pushed up**")
    cols[2].image(figures.upscale(ex["image"], 6), width=SIZE)
    contrib = np.asarray(ex["contributions"])
    top = np.argsort(contrib)[::-1][:10]
    cols[3].bar_chart({"feature": [str(i) for i in top],
                       "contribution": [float(contrib[i]) for i in top]},
                      x="feature", y="contribution", horizontal=True, sort="-contribution",
                      x_label="feature", y_label="contribution to the predicted logit")
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
