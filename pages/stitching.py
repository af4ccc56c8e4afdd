import streamlit as st

st.title("stitching")
st.info("Coming soon.")
