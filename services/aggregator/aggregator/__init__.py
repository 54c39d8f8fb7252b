"""VisionTrack aggregator: moves the telemetry stream into Postgres and keeps the data tidy (Celery)."""
