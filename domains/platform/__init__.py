"""The platform domain: diagnostics (pings) and platform-wide workflows; schema and queue ``platform``."""
