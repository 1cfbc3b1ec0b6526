"""One module (or package) per domain, each exporting ``router``; app.py discovers them — no central list."""
