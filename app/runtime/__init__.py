"""Long-running processes ``conveyor up`` starts and watches: the outbox publisher and relay,
the beat scheduler, the embedded PostgreSQL and Redis servers, the supervisor, the stack's
lock and state file, and the worker liveness probe.
"""
