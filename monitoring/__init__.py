"""Monitoring: health checks, Flower configuration, metrics and logging."""
