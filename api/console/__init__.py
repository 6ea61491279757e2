"""The operations console at ``/console``: server-rendered pages over the public ``/v1`` API.

Every page calls the ``/v1`` routes in-process (httpx ``ASGITransport`` on this same app) with the
signed-in API key, through the Python client (``clients/python``): the authentication, scopes,
tenant isolation, rate limit and validation a page gets are exactly the API's. There is no
other way in. See :mod:`api.console.routes` and :mod:`api.console.session`.
"""
