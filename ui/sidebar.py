"""The sidebar every page shares: models A and B with their cards, adding a model
(private to the session), the compute device, and the talk controls."""
from __future__ import annotations

import streamlit as st
import torch

from core import data
from core.errors import RobustLensError, UntrustedPickleError
from core.models import zoo
from core.server import access
from core.analyses.unforeseen import UNFORESEEN
from core.training.evaluation import own_pgd20

from . import backend, presentation, state, uploads


def _choice(spec: str) -> str:
    return f"{backend.label(spec)} ({backend.model_kind(spec)})"


def _card_summary(where, spec: str) -> None:
    c = backend.model_card(spec)
    measured = c.get("measured") or {}
    bits = []
    if c.get("arch"):
        bits.append(f"{c['arch']} w{c.get('width', '?')}")
    if "clean" in measured:
        bits.append(f"clean {measured['clean']:.1%}")
        own = own_pgd20(c)
        if own is not None:
            bits.append(f"PGD-20 {own:.1%}")
        strong = measured.get("strong")
        if strong:
            bits.append(f"worst of PGD/APGD {strong['worst_case']:.1%}")
    check = c.get("check") or {}
    if not measured:
        kind = c.get("dataset", "other")
        bits = [c.get("arch", ""), f"{c.get('input_size', '?')} px " + (
                data.KIND_NAMES[kind] if kind in ("cifar10", "imagenet")
                else f"{c.get('num_classes', '?')} classes"),
                f"{check['top1']:.0%} top-1 on {check['n']} samples" if check.get("n") else ""]
    where.caption(" · ".join(b for b in bits if b) or c.get("source", ""))
    if c.get("notice"):
        where.caption(f":material/warning: {c['notice']}")
    with where.popover("Model card", icon=":material/badge:", width="stretch"):
        if check.get("text"):
            st.markdown(f"**Check after loading.** {check['text']}.")
        if c.get("recipe"):
            st.markdown(f"**Recipe.** {c['recipe']}.")
        if measured:
            rows = [{"measure": "clean", "accuracy": f"{measured['clean']:.1%}"}] + [
                {"measure": k, "accuracy": f"{v:.1%}"} for k, v in measured.get("pgd", {}).items()]
            strong = measured.get("strong")
            if strong:
                rows.append({"measure": f"worst of PGD-20, APGD-CE, APGD-DLR ({strong['threat']}, "
                                        f"{strong['n']:,} images)",
                             "accuracy": f"{strong['worst_case']:.1%}"})
            unforeseen = measured.get("unforeseen") or {}
            rows += [{"measure": f"{UNFORESEEN[k].label} (unforeseen, {unforeseen['n']:,} "
                                 f"images)", "accuracy": f"{unforeseen[k]:.1%}"}
                     for k in UNFORESEEN if k in unforeseen]
            st.dataframe(rows, hide_index=True, width="stretch")
            st.caption(f"Measured on {measured.get('n', '?'):,} CIFAR-10 test images "
                       f"({measured.get('hardware', '')}, {measured.get('date', '')}).")
            if strong:
                st.caption(f"Gradient masking check: {strong['masking_check']}.")
        verdict = (c.get("target") or {}).get("verdict")
        if verdict:
            st.caption(f"Target {'met' if verdict['met'] else 'not met'}: {verdict['text']}.")
            if c["target"].get("why_missed"):
                st.caption(c["target"]["why_missed"])
        if c.get("why_width"):
            st.caption(c["why_width"])
        st.json(c, expanded=False)


def _add() -> None:
    """The Add button's callback (it runs before the widgets are drawn, so the new
    model can become model A at once): load, remember for this session, report."""
    upload = st.session_state.get("ckpt_upload")
    typed = (st.session_state.get("ckpt_spec") or "").strip()
    if upload is None and not typed:
        st.session_state["_add_report"] = ("warning", "Choose a file or type a path or name first.")
        return
    rights = backend.rights()
    try:
        spec = uploads.save_checkpoint(upload) if upload is not None else model_spec(typed, rights)
        if st.session_state.get("ckpt_trust") and rights.pickles:
            st.session_state.setdefault("trusted_specs", set()).add(spec)
        probe = backend.model(spec)
    except UntrustedPickleError as e:
        st.session_state["_add_report"] = ("warning", str(e) if rights.pickles else (
            "This file is a pickle that runs code stored in it when loaded, and this shared "
            "server loads none for visitors; whoever started it can allow them "
            "(ROBUSTLENS_ALLOW_PICKLES=1). A safetensors file or a plain state dict loads."))
        return
    except RobustLensError as e:
        st.session_state["_add_report"] = ("warning", str(e))
        return
    specs = st.session_state.setdefault("custom_specs", [])
    if spec not in specs:
        specs.append(spec)
    st.session_state["a"] = spec
    st.session_state["_add_report"] = ("success", f"Added {probe.name} as model A: "
                                                  f"{len(probe.layers)} taps.")


def model_spec(typed: str, rights: access.Rights) -> str:
    """What a person typed as a model: a shipped or hub name, or a path this session may
    read (one sentence if not)."""
    source, _, name = typed.partition(":")
    if typed in zoo.names():
        return typed
    if source in zoo.HUBS and name:
        zoo.check_hub_name(source, name)
        return typed
    return str(access.readable_path(typed, rights))


def _add_model(where) -> None:
    rights = backend.rights()
    with where.expander("Add a model", icon=":material/add:"):
        paths = "a path on this server, " if rights.folders is None else \
            "a path in the folders this server's operator allows, " if rights.folders else ""
        st.caption(f"A checkpoint file up to {uploads.MAX_CHECKPOINT_MB} MB (safetensors, a "
                   f"state dict, a `robustness` library checkpoint), or {paths}or a name: "
                   "`madrylab:resnet50_l2_eps3`, `robustbench:NAME`, `timm:NAME`, "
                   "`torchvision:resnet50`. Your files are visible to your session only.")
        st.file_uploader("Checkpoint", type=uploads.CHECKPOINT_TYPES, key="ckpt_upload")
        st.text_input("...or a path / name" if rights.folders != () else "...or a name",
                      key="ckpt_spec")
        if rights.pickles:
            st.checkbox("Trust this file (allows code execution while loading)",
                        key="ckpt_trust", help="Only for pickles from a source you trust.")
        off = [what for what, on in (("loading pickles that can run code", rights.pickles),
                                     ("reading files by path", rights.folders != ()),
                                     ("downloads", rights.downloads)) if not on]
        if off:
            st.caption(f"This is a shared server: {', '.join(off)} "
                       f"{'is' if len(off) == 1 else 'are'} off for visitors; whoever started "
                       "it can turn them on (see the README).")
        st.button("Add", key="ckpt_add", on_click=_add)
        report = st.session_state.pop("_add_report", None)
        if report:
            kind, text = report
            (st.success if kind == "success" else st.warning)(
                text, icon=":material/check:" if kind == "success" else ":material/error:")


def draw(pages: list) -> None:
    """The pages, models, device and talk controls (keys 'a', 'b', 'device', 'present')."""
    specs = backend.model_specs()
    # a link's model this server does not offer (one added in another session): said once
    unknown = {w: st.query_params[w] for w in ("a", "b") if w not in st.session_state
               and st.query_params.get(w) not in (None, *specs)}
    with st.sidebar:
        for p in pages:
            st.page_link(p)
        st.markdown("### Models")
        if not specs:
            st.warning("No models found in pretrained/; add one below.")
        else:
            state.selectbox(st, "", "a", specs, format_func=_choice)
            _card_summary(st, st.session_state["a"])
            state.selectbox(st, "", "b", specs, format_func=_choice)
            _card_summary(st, st.session_state["b"])
        _add_model(st)
        options = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
            ["mps"] if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
            else [])
        if "device_next" in st.session_state:  # set by the out-of-memory fallback
            st.session_state["device"] = st.session_state.pop("device_next")
        if st.session_state.get("device") not in options:
            st.session_state["device"] = "auto"
        st.selectbox("Device", options, key="device",
                     help="auto: CUDA, then Apple MPS, then CPU. Results are the same on every "
                          "device and are shared through the results store.")
        st.markdown("### Talk")
        presentation.controls(st)
    for which, spec in unknown.items():
        st.info(f"The link names model {which.upper()} as {spec!r}, which this server does not "
                f"offer (a model added by path or upload belongs to the session that added "
                f"it); showing {_choice(st.session_state[which]) if specs else 'none'} instead.",
                icon=":material/link_off:")


def chosen(which: str) -> str:
    """The model chosen in the sidebar as 'a' or 'b' (stops the page if there is none)."""
    if not st.session_state.get(which):
        st.warning("No models are available: add one in the sidebar (a checkpoint file, "
                   "`robustbench:NAME` or `torchvision:NAME`).", icon=":material/warning:")
        st.stop()
    return st.session_state[which]
