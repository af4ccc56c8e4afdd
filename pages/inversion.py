import streamlit as st

st.title("inversion")
st.info("Coming soon.")
