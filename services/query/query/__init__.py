"""VisionTrack query service: raw, aggregated and latest telemetry, alerts; the seed's telemetry POST."""
