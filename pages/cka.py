import streamlit as st

st.title("cka")
st.info("Coming soon.")
