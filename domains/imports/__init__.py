"""The imports domain (schema and queue ``imports``)."""
