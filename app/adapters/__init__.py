"""Outbound adapters the domains' ports are plugged into: the webhook HTTP sender, the import
source fetcher, and the Celery app (queues, routes, task modules).
"""
