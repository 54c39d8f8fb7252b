"""VisionTrack query service: raw, aggregated and latest telemetry, alerts; the first API's telemetry POST."""
