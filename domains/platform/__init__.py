"""The platform domain: pings, schedules (with the beat leader) and API keys; schema and queue ``platform``."""
