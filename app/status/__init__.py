"""Reads of the running system (broker queues, workers, outboxes, beat leader) that
``GET /v1/system/status``, ``conveyor status`` and ``conveyor metrics`` share.
"""
