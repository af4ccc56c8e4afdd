"""Feature manipulation: visualise, find, add and blend the features of robust representations."""
import numpy as np
import streamlit as st
import torch

from core import backend, data, exports, figures, jobs, views

PAGE = "manipulation"
PAPER = ("Engstrom, Ilyas, Santurkar, Tsipras, Tran, Madry: *Adversarial Robustness as a Prior "
         "for Learned Representations*, 2019")
TABS = ["Feature browser", "Feature addition", "Interpolation", "Misclassification"]

backend.page_header("Feature manipulation", "Gradient descent in pixel space, with no image prior: a robust model's "
           "representation is close to human-meaningful features, a standard model's is not. "
           f"The last ReLU is an identity in the backward pass (\"fake ReLU\"). After {PAPER}.")

a, b = backend.selected("a"), backend.selected("b")
specs = [a, b]
probe_a = backend.model(a)
scale = 7 if backend.presenting() else 5


def live_pair(job_list):
    """Run two optimisation jobs side by side, showing frames as they improve."""
    cols = st.columns(len(job_list))
    slots, notes = [], []
    for col, s in zip(cols, specs):
        col.markdown(f"**{backend.label(s)}**")
        slots.append(col.empty())
        notes.append(col.empty())

    def show(i, step, total, loss, images):
        if images is not None:
            slots[i].image(figures.upscale(images[0], scale), width="stretch")
        if images is not None or step % 25 == 0:
            notes[i].caption(f"step {step}/{total}")
    return backend.run_live(job_list, show), slots, notes


def sample_items():
    return [{"key": s.key, "image": s.image, "title": s.title,
             "caption": data.CLASSES[s.label] if s.label is not None else s.title.split(" (")[0]}
            for s in backend.samples() + backend.photos()]


def feature_class(index: int) -> str:
    w = probe_a.model.linear.weight.detach().float().cpu()
    return data.CLASSES[int(w[:, index].argmax())]


# ------------------------------------------------------------------ browser

def browser() -> None:
    feats = jobs.browser_features(probe_a)
    grid_job = jobs.feature_grid_job(backend.model, a, feats)
    grid = backend.stored(grid_job)
    st.markdown(f"Features of **{backend.label(a)}**: for each class, the four components of "
                "the representation with the largest weight towards it, each maximised from "
                "noise. Click one.")
    if grid is None:
        if not st.button(f"Visualise {len(feats)} features", type="primary",
                         icon=":material/play_arrow:"):
            return
        grid = backend.run_job(grid_job)
    items = [{"key": f"f{i}", "image": img, "title": f"feature {i} (→ {feature_class(i)})",
              "caption": f"{i} · {feature_class(i)[:5]}"}
             for i, img in zip(grid["indices"], grid["images"])]
    backend.url_state("mf_feat", items[0]["key"])
    if st.session_state["mf_feat"] not in [it["key"] for it in items]:
        st.session_state["mf_feat"] = items[0]["key"]
    backend.gallery(items, "mf_feat", size=64, label="features")
    backend.publish(["mf_feat"])
    index = int(st.session_state["mf_feat"][1:])
    st.subheader(f"Feature {index} (strongest towards {feature_class(index)})")
    c = st.columns([1, 1, 2])
    vis_jobs = [jobs.feature_grid_job(backend.model, s, [index]) for s in specs]
    vis = [backend.stored(j) for j in vis_jobs]
    if any(v is None for v in vis) and c[0].button("Visualise in both models", key="mf_vis"):
        vis = [backend.run_job(j) for j in vis_jobs]
    for k, s in enumerate(specs):
        c[k].markdown(f"**{backend.label(s)}**")
        if vis[k] is not None:
            c[k].image(figures.upscale(vis[k]["images"][0], scale + 1), width="stretch")
    with c[2]:
        top_images(feats, index)
    backend.figure_caption(PAGE, f"feature {index} of {backend.label(a)}, maximised from noise")
    backend.export_menu(f"features-{a}", [
        ("All features, PNG", lambda: exports.image_strip(
            grid["images"], {"kind": grid_job.kind, **grid_job.inputs}, 4,
            [str(i) for i in grid["indices"]]), ".png", "image/png")])


def top_images(feats: list[int], index: int) -> None:
    test = backend.test_set()
    top_job = jobs.top_images_job(backend.model, a, feats)
    top = backend.stored(top_job)
    if top is None and test is not None and st.button("Find the top-activating test images",
                                                      key="mf_top"):
        top = backend.run_job(top_job)
    if top is None:
        if test is None:
            backend.data_missing_message("Finding top-activating images")
        return
    entry = top.get(str(index))
    if entry is None:
        return
    if test is None:
        st.info("The top-activating images of this feature are known (as test-set indices) "
                "but the test set is not on this machine. " + data.GET_DATA_HINT)
        return
    for title, key in (("Most activating", "top"), ("Least activating", "bottom")):
        st.caption(f"{title} test images ({backend.label(a)})")
        st.image([figures.upscale(test.images[int(i)], 2) for i in entry[key]],
                 caption=[f"{float(v):.2f}" for v in entry[key + "_values"]])


# ------------------------------------------------------------------ addition

def addition() -> None:
    st.markdown("Push one component of the representation up, starting from a real image: in "
                "a robust model the feature appears in the image.")
    c = st.columns([3, 1])
    with c[0]:
        items = sample_items()
        backend.url_state("mf_add_img", items[0]["key"], [it["key"] for it in items])
        backend.gallery(items, "mf_add_img", size=52, label="images")
    dim = probe_a.model.linear.in_features
    chosen = st.session_state.get("mf_feat", "f0")
    backend.url_state("mf_add_index", int(chosen[1:]) if chosen[1:].isdigit() else 0)
    index = c[1].number_input("Feature", 0, dim - 1, key="mf_add_index",
                              help="A component of the representation; pick one in the browser.")
    backend.publish(["mf_add_img", "mf_add_index"])
    found = views.image_for(st.session_state["mf_add_img"])
    if found is None:
        return
    add_jobs = [jobs.add_feature_job(backend.model, s, found[0], int(index)) for s in specs]
    if not all(backend.stored(j) is not None for j in add_jobs) and not st.button(
            f"Add feature {index}", type="primary", key="mf_add_go", icon=":material/add:"):
        return
    cols = st.columns([1, 2])
    cols[0].markdown("**Original**")
    cols[0].image(figures.upscale(found[0], scale), width="stretch")
    with cols[1]:
        results, _, notes = live_pair(add_jobs)
    for k, r in enumerate(results):
        notes[k].caption(f"feature {index}: {r['before']:.2f} → **{r['after']:.2f}**")
    backend.figure_caption(PAGE, f"feature {index} added to {found[1]}")
    inputs = {"kind": "add_feature", "jobs": [j.inputs for j in add_jobs]}
    backend.export_menu(f"add-feature-{index}", [
        ("Before and after, PNG", lambda: exports.image_strip(
            [found[0]] + [r["images"][0] for r in results], inputs, 8,
            ["original"] + [backend.label(s) for s in specs]), ".png", "image/png"),
        (f"Optimisation of {backend.label(a)}, GIF", lambda: exports.gif(
            [f[1][0] for f in results[0]["frames"]], inputs), ".gif", "image/gif")])


# ------------------------------------------------------------------ interpolation

def interpolation() -> None:
    st.markdown("Invert (1 − t)·R(a) + t·R(b), each frame starting from the same mix in pixel "
                "space: the robust model moves between the images through meaningful shapes.")
    names = {s.key: s.title for s in backend.samples() + backend.photos()}
    keys = list(names)
    c = st.columns(3, vertical_alignment="bottom")
    backend.url_state("mf_ia", keys[0], keys)
    backend.url_state("mf_ib", keys[3] if len(keys) > 3 else keys[-1], keys)
    ia = c[0].selectbox("Image a", keys, key="mf_ia", format_func=names.get)
    ib = c[1].selectbox("Image b", keys, key="mf_ib", format_func=names.get)
    backend.publish(["mf_ia", "mf_ib"])
    ijobs = [jobs.interpolation_job(backend.model, s, views.image_for(ia)[0],
                                    views.image_for(ib)[0]) for s in specs]
    results = [backend.stored(j) for j in ijobs]
    if any(r is None for r in results):
        if not c[2].button("Interpolate", type="primary", icon=":material/linear_scale:"):
            return
        results, _, _ = live_pair(ijobs)
    n = len(results[0]["images"])
    backend.url_state("mf_t", 0)
    t = st.slider("Frame", 0, n - 1, key="mf_t")
    cols = st.columns([1, 1, 3])
    for k, (s, r) in enumerate(zip(specs, results)):
        cols[k].markdown(f"**{backend.label(s)}**, t = {t / (n - 1):.2f}")
        cols[k].image(figures.upscale(r["images"][t], scale), width="stretch")
    with cols[2]:
        for s, r in zip(specs, results):
            st.caption(backend.label(s))
            st.image([figures.upscale(im, 2) for im in r["images"]])
    backend.figure_caption(PAGE, f"interpolation from {names[ia]} to {names[ib]}")
    inputs = {"kind": "interpolation", "jobs": [j.inputs for j in ijobs]}
    backend.export_menu(f"interpolation-{ia}-{ib}", [
        (f"Strip, {backend.label(s)}, PNG", (lambda r=r: exports.image_strip(
            r["images"], inputs, 6)), f"-{k}.png", "image/png")
        for k, (s, r) in enumerate(zip(specs, results))] + [
        (f"Animation, {backend.label(s)}, GIF", (lambda r=r: exports.gif(
            list(r["images"]) + list(r["images"])[::-1], inputs)), f"-{k}.gif", "image/gif")
        for k, (s, r) in enumerate(zip(specs, results))])


# ------------------------------------------------------------------ misclassification

def misclassified() -> list[dict]:
    test = backend.test_set()
    if test is None:
        probe = backend.model(a)
        out = []
        for s in backend.samples():
            with torch.no_grad():
                pred = int(probe(s.tensor()[None].to(probe.device)).argmax())
            if pred != s.label:
                out.append({"key": s.key, "image": s.image, "label": s.label,
                            "title": f"{s.title} → {data.CLASSES[pred]}",
                            "caption": f"→ {data.CLASSES[pred][:6]}"})
        st.caption(f"Misclassified shipped samples ({len(out)}); the full test set gives many "
                   "more. " + data.GET_DATA_HINT)
        return out
    out_job = jobs.test_outputs_job(backend.model, a)
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
             "title": f"test {i}: {data.CLASSES[int(test.labels[i])]} → "
                      f"{data.CLASSES[int(outs['predicted'][i])]}",
             "caption": f"→ {data.CLASSES[int(outs['predicted'][i])][:6]}"} for i in order]


def misclassification() -> None:
    st.markdown("For a misclassified image: the component contributing most to the wrong "
                "class (last-layer weight × feature), then that component pushed up: what the "
                "model \"sees\".")
    candidates = misclassified()
    if not candidates:
        return
    backend.url_state("mf_mis", candidates[0]["key"])
    if st.session_state["mf_mis"] not in [c["key"] for c in candidates]:
        st.session_state["mf_mis"] = candidates[0]["key"]
    backend.gallery(candidates, "mf_mis", size=52, label="misclassified images")
    backend.publish(["mf_mis"])
    cand = next(x for x in candidates if x["key"] == st.session_state["mf_mis"])
    ejob = jobs.explain_job(backend.model, a, cand["image"], cand["label"])
    ex = backend.stored(ejob)
    if ex is None:
        if not st.button("Explain", type="primary", key="mf_explain"):
            return
        ex = backend.run_job(ejob)
    cols = st.columns(4)
    cols[0].markdown(f"**Image**: {data.CLASSES[ex['label']]}")
    cols[0].image(figures.upscale(cand["image"], scale), width="stretch")
    cols[1].markdown(f"**Predicted**: {data.CLASSES[ex['predicted']]} "
                     f"({float(ex['probabilities'][ex['predicted']]):.0%})")
    cols[1].metric("Top component", ex["component"],
                   help=f"contribution to the predicted logit: {ex['contribution']:.2f}")
    cols[2].markdown(f"**Feature {ex['component']} pushed up**")
    cols[2].image(figures.upscale(ex["image"], scale), width="stretch")
    contrib = np.asarray(ex["contributions"])
    top = np.argsort(contrib)[::-1][:10]
    cols[3].bar_chart({"contribution": {str(i): float(contrib[i]) for i in top}}, horizontal=True)
    backend.figure_caption(PAGE, f"{backend.label(a)} predicts {data.CLASSES[ex['predicted']]} "
                                 f"for a {data.CLASSES[ex['label']]}")


backend.url_state("mf_tab", TABS[0], TABS)
tabs = st.tabs(TABS, key="mf_tab", on_change="rerun")
backend.publish(["mf_tab"])
for tab, body in zip(tabs, (browser, addition, interpolation, misclassification)):
    with tab:
        if tab.open:  # only the open tab runs
            with backend.guard():
                body()
