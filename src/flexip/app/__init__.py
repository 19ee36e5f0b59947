"""The web page (`flexip serve`): `page.py` lays it out on gradio, `service.py` serves a request without it.

Needs the `app` extra (`pip install "flexip[app]"`); nothing else in the library imports this package.
"""
