"""RobustLens: see how adversarially robust and standard networks represent images."""
import os

# several sessions share the cores: idle OpenMP threads sleep instead of spinning
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import streamlit as st  # noqa: E402

from core import analyses  # noqa: E402
from ui import backend, presentation, sidebar, state  # noqa: E402
from ui.handover import app_run, present_in_url  # noqa: E402

# URL paths are the file names in pages/: a cold server resolves a first deep
# link against that folder, and each page's ui.handover.setup() then hands the
# visit over to this script (see there).
backend.claim_operator()   # before anything reads the URL: the operator key leaves it
presenting = st.session_state.get("present", present_in_url())
# a presentation opens with the sidebar collapsed, before its CSS arrives (no flash)
st.set_page_config(page_title="RobustLens", page_icon=":material/visibility:", layout="wide",
                   initial_sidebar_state="collapsed" if presenting else "auto")
# the analyses' pages (core.analyses registers each with its script, title and icon)
PAGES = [st.Page("pages/home.py", title="Home", icon=":material/home:", default=True)] + [
    st.Page(p.script, title=p.title, icon=p.icon, url_path=p.key) for p in analyses.pages()]
# the sidebar draws the menu itself (client.showSidebarNavigation hides Streamlit's)
pages = st.navigation(PAGES, position="hidden")
presentation.start(pages.url_path)   # keys, slide moves, presentation CSS: before any widget
state.keep()
sidebar.draw(PAGES)
presentation.bar()
backend.notices()
with app_run():
    pages.run()
