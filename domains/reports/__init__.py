"""The reports domain (schema and queue ``reports``)."""
