"""Fast service tests: the real services on in-memory fakes, no PostgreSQL, Redis or broker.

Nothing here asks for the ``database_url``/``settings`` fixtures, so a run of this folder never
touches a server (``CONVEYOR_TEST_DATABASE_URL=postgresql://nowhere:1/x`` proves it).
"""
