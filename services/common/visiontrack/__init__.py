"""VisionTrack's shared Python package: config, database, migrations, stream format, validation."""
