"""The web pages: one module per domain (auth, installation, consumption, greenup), each exporting
``router`` (discovered by ``app.discover`` like the JSON API's domains). Pages call the same domain
functions as the JSON API, behind the same permission guards, and render the Jinja templates of
``web/templates/<domain>/``. Modules starting with ``_`` are shared helpers, not routers.
"""
