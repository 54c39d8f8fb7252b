"""VisionTrack device registry: devices, their tokens and (later) alert rules."""
