"""In-memory fakes of each domain's unit of work and repositories, for fast service tests.

One module per domain (``operations`` holds the common parts every domain fake builds on).
See ``tests/fakes/operations.py`` for the semantics they keep and the ones they do not.
"""
