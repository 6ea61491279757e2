"""Conveyor business domains: pure Python models, repositories, services and events."""
