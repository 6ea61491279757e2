"""Schedules: workflows or system tasks started on a cron or interval, fired by the beat."""
