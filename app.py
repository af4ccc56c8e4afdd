"""RobustLens: see how adversarially robust and standard networks represent images."""
import os

# several sessions share the cores: idle OpenMP threads sleep instead of spinning
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import streamlit as st

from core import backend

st.set_page_config(page_title="RobustLens", page_icon=":material/visibility:", layout="wide")

# URL paths differ from the file names in pages/: on a cold server Streamlit
# first resolves a link against that folder, and a name it does not know there
# sends the visitor through this script, as every visit should go.
pages = st.navigation([
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/cka.py", title="CKA explorer", icon=":material/grid_on:", url_path="cka-explorer"),
    st.Page("pages/stitching.py", title="Stitching matrix", icon=":material/join_inner:",
            url_path="stitching-matrix"),
    st.Page("pages/inversion.py", title="Representation inversion", icon=":material/flip:",
            url_path="representation-inversion"),
    st.Page("pages/manipulation.py", title="Feature manipulation", icon=":material/tune:",
            url_path="feature-manipulation"),
])
backend.sidebar()
backend.presentation_css()
backend.deck_bar()
pages.run()
