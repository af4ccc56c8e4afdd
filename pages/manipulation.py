import streamlit as st

st.title("manipulation")
st.info("Coming soon.")
