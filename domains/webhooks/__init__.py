"""The webhooks domain (schema and queue ``webhooks``)."""
