"""Celery tasks grouped by topic; each has an explicit name, a time limit and an idempotent body."""
