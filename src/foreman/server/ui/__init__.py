"""The web dashboard at /ui: pages.py (routes), login.py, session.py, render.py, templates/, static/."""
