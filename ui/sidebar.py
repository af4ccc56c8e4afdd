"""The sidebar every page shares: models A and B with their cards, adding a model
(private to the session), the compute device, and the talk controls."""
from __future__ import annotations

import streamlit as st
import torch

from core import backend
from core.errors import RobustLensError
from core.evaluation import own_pgd20

from . import presentation, state, uploads


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
            bits.append(f"AutoAttack-style {strong['worst_case']:.1%}")
    where.caption(" · ".join(bits) if bits else c.get("source", ""))
    with where.popover("Model card", icon=":material/badge:", width="stretch"):
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


def _add_model(where) -> None:
    with where.expander("Add a model", icon=":material/add:"):
        st.caption(f"A checkpoint file up to {uploads.MAX_CHECKPOINT_MB} MB (safetensors, a "
                   "state dict, a `robustness` library checkpoint), or a path on this server or "
                   "a name such as `robustbench:NAME` or `torchvision:NAME` for larger ones. "
                   "Your files are visible to your session only.")
        upload = st.file_uploader("Checkpoint", type=uploads.CHECKPOINT_TYPES, key="ckpt_upload")
        spec_text = st.text_input("...or a path / name", key="ckpt_spec")
        trust = st.checkbox("Trust this file (allows code execution while loading)",
                            key="ckpt_trust", help="Only for pickles from a source you trust.")
        if st.button("Add", key="ckpt_add"):
            spec = uploads.save_checkpoint(upload) if upload is not None else spec_text.strip()
            if not spec:
                st.warning("Choose a file or type a path or name first.")
                return
            if trust:
                st.session_state.setdefault("trusted_specs", set()).add(spec)
            try:
                probe = backend.model(spec)
            except RobustLensError as e:
                st.warning(str(e), icon=":material/error:")
                return
            specs = st.session_state.setdefault("custom_specs", [])
            if spec not in specs:
                specs.append(spec)
            st.success(f"Added {probe.name}: {len(probe.layers)} taps. Pick it above.")


def draw() -> None:
    """Models, device and talk controls (keys 'a', 'b', 'device', 'present')."""
    specs = backend.model_specs()
    with st.sidebar:
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


def chosen(which: str) -> str:
    """The model chosen in the sidebar as 'a' or 'b' (stops the page if there is none)."""
    if not st.session_state.get(which):
        st.warning("No models are available: add one in the sidebar (a checkpoint file, "
                   "`robustbench:NAME` or `torchvision:NAME`).", icon=":material/warning:")
        st.stop()
    return st.session_state[which]
