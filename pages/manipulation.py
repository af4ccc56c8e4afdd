"""Feature manipulation: visualise, find, add and blend the features of robust representations."""
import numpy as np
import streamlit as st

from core import backend, data, figures, jobs

PAPER = ("Engstrom, Ilyas, Santurkar, Tsipras, Tran, Madry: *Adversarial Robustness as a Prior "
         "for Learned Representations*, 2019")

backend.page_setup()
st.title("Feature manipulation")
st.caption("Gradient descent in pixel space, with no image prior: a robust model's "
           "representation is close to human-meaningful features, a standard model's is not. "
           f"The last ReLU is an identity in the backward pass (\"fake ReLU\"). After {PAPER}.")

a, b = backend.selected("a"), backend.selected("b")
specs = [a, b]
probe_a = backend.model(a)


def live_pair(job_list, big=5, key=""):
    """Run two optimisation jobs side by side, showing frames as they improve."""
    cols = st.columns(len(job_list))
    slots, notes = [], []
    for col, s in zip(cols, specs):
        col.markdown(f"**{backend.label(s)}**")
        slots.append(col.empty())
        notes.append(col.empty())

    def show(i, step, total, loss, images):
        if images is not None:
            slots[i].image(figures.upscale(images[0], big), width="stretch")
        if images is not None or step % 25 == 0:
            notes[i].caption(f"step {step}/{total}")
    results = backend.run_live(job_list, show)
    return results, slots, notes


def sample_items():
    return [{"key": s.key, "image": s.image, "title": s.title,
             "caption": data.CLASSES[s.label] if s.label is not None else s.title.split(" (")[0]}
            for s in backend.samples() + backend.photos()]


def sample_image(key):
    s = next((s for s in backend.samples() + backend.photos() if s.key == key), None)
    return s


tabs = st.tabs(["Feature browser", "Feature addition", "Interpolation", "Misclassification"])

# ------------------------------------------------------------------ browser
with tabs[0], backend.guard():
    feats = jobs.browser_features(probe_a)
    grid_job = jobs.feature_grid_job(backend.model, a, feats)
    grid = backend.stored(grid_job)
    st.markdown(f"Features of **{backend.label(a)}**: for each class, the four components of "
                "the representation with the largest weight towards it, each maximised from "
                "noise. Click one.")
    if grid is None and st.button(f"Visualise {len(feats)} features", type="primary",
                                  icon=":material/play_arrow:"):
        grid = backend.run_job(grid_job)
    if grid is not None:
        w = probe_a.model.linear.weight.detach().float().cpu()
        items = [{"key": f"f{i}", "image": img, "title": f"feature {i} (→ {data.CLASSES[int(w[:, i].argmax())]})",
                  "caption": f"{i} · {data.CLASSES[int(w[:, i].argmax())][:5]}"}
                 for i, img in zip(grid["indices"], grid["images"])]
        backend.url_state("mf_feat", items[0]["key"])
        backend.gallery(items, "mf_feat", size=64, label="features")
        backend.publish(["mf_feat"])
        index = int(st.session_state["mf_feat"][1:])
        st.session_state["mf_index"] = index
        st.subheader(f"Feature {index}")
        c = st.columns([1, 1, 2])
        vis = [backend.stored(jobs.feature_grid_job(backend.model, s, [index])) for s in specs]
        for k, s in enumerate(specs):
            c[k].markdown(f"**{backend.label(s)}**")
            if vis[k] is not None:
                c[k].image(figures.upscale(vis[k]["images"][0], 6), width="stretch")
        if any(v is None for v in vis):
            if c[0].button("Visualise in both models", key="mf_vis"):
                for k, s in enumerate(specs):
                    vis[k] = backend.run_job(jobs.feature_grid_job(backend.model, s, [index]))
                st.rerun()
        with c[2]:
            test = backend.test_set()
            top_job = jobs.top_images_job(backend.model, a, feats)
            top = backend.stored(top_job)
            if top is None and test is not None:
                if st.button("Find the top-activating test images", key="mf_top"):
                    top = backend.run_job(top_job)
            if top is not None and str(index) in top:
                entry = top[str(index)]
                if test is None:
                    st.info("The top-activating images are known (as test-set indices) but the "
                            "test set is not on this machine. " + data.GET_DATA_HINT)
                else:
                    for title, key in (("Most activating", "top"), ("Least activating", "bottom")):
                        st.caption(f"{title} test images ({backend.label(a)})")
                        st.image([figures.upscale(test.images[int(i)], 2) for i in entry[key]],
                                 caption=[f"{float(v):.2f}" for v in entry[key + "_values"]])
            elif test is None:
                backend.data_missing_message("Finding top-activating images")

# ------------------------------------------------------------------ addition
with tabs[1], backend.guard():
    st.markdown("Push one component of the representation up, starting from a real image: in a "
                "robust model the feature appears in the image.")
    c = st.columns([3, 1])
    with c[0]:
        items = sample_items()
        backend.url_state("mf_add_img", items[0]["key"])
        backend.gallery(items, "mf_add_img", size=52, label="images")
    dim = probe_a.model.linear.in_features
    backend.url_state("mf_add_index", int(st.session_state.get("mf_index", 0)))
    index = c[1].number_input("Feature", 0, dim - 1, key="mf_add_index",
                              help="A component of the representation; pick one in the browser.")
    backend.publish(["mf_add_img", "mf_add_index"])
    sample = sample_image(st.session_state["mf_add_img"])
    if sample is not None:
        add_jobs = [jobs.add_feature_job(backend.model, s, sample.image, int(index)) for s in specs]
        go = all(backend.stored(j) is not None for j in add_jobs) or st.button(
            f"Add feature {index}", type="primary", key="mf_add_go", icon=":material/add:")
        if go:
            cols = st.columns([1, 2])
            cols[0].markdown("**Original**")
            cols[0].image(figures.upscale(sample.image, 5), width="stretch")
            with cols[1]:
                results, _, notes = live_pair(add_jobs)
            for k, r in enumerate(results):
                notes[k].caption(f"feature {index}: {r['before']:.2f} → **{r['after']:.2f}**")

# ------------------------------------------------------------------ interpolation
with tabs[2], backend.guard():
    st.markdown("Invert (1 − t)·R(a) + t·R(b), each frame starting from the same mix in pixel "
                "space: the robust model moves between the images through meaningful shapes.")
    names = {s.key: s.title for s in backend.samples() + backend.photos()}
    keys = list(names)
    c = st.columns(3)
    backend.url_state("mf_ia", keys[0], keys)
    backend.url_state("mf_ib", keys[3] if len(keys) > 3 else keys[-1], keys)
    ia = c[0].selectbox("Image a", keys, key="mf_ia", format_func=names.get)
    ib = c[1].selectbox("Image b", keys, key="mf_ib", format_func=names.get)
    backend.publish(["mf_ia", "mf_ib"])
    sa, sb = sample_image(ia), sample_image(ib)
    ijobs = [jobs.interpolation_job(backend.model, s, sa.image, sb.image) for s in specs]
    results = [backend.stored(j) for j in ijobs]
    if any(r is None for r in results) and c[2].button("Interpolate", type="primary",
                                                       icon=":material/linear_scale:"):
        results, _, _ = live_pair(ijobs)
    if all(r is not None for r in results):
        n = len(results[0]["images"])
        backend.url_state("mf_t", 0)
        t = st.slider("Frame", 0, n - 1, key="mf_t")
        cols = st.columns([1, 1, 3])
        for k, (s, r) in enumerate(zip(specs, results)):
            cols[k].markdown(f"**{backend.label(s)}**, t = {t / (n - 1):.2f}")
            cols[k].image(figures.upscale(r["images"][t], 5), width="stretch")
        with cols[2]:
            for s, r in zip(specs, results):
                st.caption(backend.label(s))
                st.image([figures.upscale(im, 2) for im in r["images"]])

# ------------------------------------------------------------------ misclassification
with tabs[3], backend.guard():
    st.markdown("For a misclassified image: the component contributing most to the wrong class "
                "(last-layer weight × feature), then that component pushed up: what the model "
                "\"sees\".")
    test = backend.test_set()
    candidates = []
    if test is not None:
        out_job = jobs.test_outputs_job(backend.model, a)
        outs = backend.stored(out_job)
        if outs is None and st.button("Find the misclassified test images", key="mf_mis_find"):
            outs = backend.run_job(out_job)
        if outs is not None:
            wrong = np.nonzero((outs["predicted"] != outs["labels"]).numpy())[0]
            order = np.random.default_rng(0).permutation(wrong)[:40]
            candidates = [{"key": f"test-{i}", "image": test.images[i].numpy().transpose(1, 2, 0),
                           "label": int(test.labels[i]),
                           "title": f"test {i}: {data.CLASSES[int(test.labels[i])]} → "
                                    f"{data.CLASSES[int(outs['predicted'][i])]}",
                           "caption": f"→ {data.CLASSES[int(outs['predicted'][i])][:6]}"} for i in order]
            st.caption(f"{backend.label(a)} misclassifies {len(wrong):,} of {len(test):,} test "
                       "images; 40 of them:")
    else:
        probe = backend.model(a)
        import torch
        for s in backend.samples():
            with torch.no_grad():
                pred = int(probe(s.tensor()[None].to(probe.device)).argmax())
            if pred != s.label:
                candidates.append({"key": s.key, "image": s.image, "label": s.label,
                                   "title": f"{s.title} → {data.CLASSES[pred]}",
                                   "caption": f"→ {data.CLASSES[pred][:6]}"})
        st.caption(f"Misclassified shipped samples ({len(candidates)}); the full test set "
                   "gives many more. " + data.GET_DATA_HINT)
    if candidates:
        backend.url_state("mf_mis", candidates[0]["key"])
        backend.gallery(candidates, "mf_mis", size=52, label="misclassified images")
        backend.publish(["mf_mis"])
        cand = next((x for x in candidates if x["key"] == st.session_state["mf_mis"]), candidates[0])
        ejob = jobs.explain_job(backend.model, a, cand["image"], cand["label"])
        ex = backend.stored(ejob)
        if ex is None and st.button("Explain", type="primary", key="mf_explain"):
            ex = backend.run_job(ejob)
        if ex is not None:
            cols = st.columns(4)
            cols[0].markdown(f"**Image**: {data.CLASSES[ex['label']]}")
            cols[0].image(figures.upscale(cand["image"], 5), width="stretch")
            cols[1].markdown(f"**Predicted**: {data.CLASSES[ex['predicted']]} "
                             f"({float(ex['probabilities'][ex['predicted']]):.0%})")
            cols[1].metric("Top component", ex["component"],
                           help=f"contribution to the predicted logit {ex['contribution']:.2f}")
            cols[2].markdown(f"**Feature {ex['component']} pushed up**")
            cols[2].image(figures.upscale(ex["image"], 5), width="stretch")
            contrib = np.asarray(ex["contributions"])
            top = np.argsort(contrib)[::-1][:10]
            cols[3].bar_chart({"contribution": {str(i): float(contrib[i]) for i in top}},
                              horizontal=True)
    elif test is not None and candidates == [] and backend.stored(jobs.test_outputs_job(backend.model, a)) is not None:
        st.info("No misclassified images.")
