"""The Streamlit widgets the pages share: settings bound to the URL, sidebar, talk
decks and presentation mode, the image gallery, private uploads. No computation:
everything computed comes from core (through ui.backend)."""
