-- Metric names compare byte by byte. They lead every key after device_id (raw rows, both rollups, latest
-- values), so each B-tree descent compares them, and under a libc locale (C.UTF-8, en_US.UTF-8) each
-- compare is a strcoll() on NUL-terminated copies; "C" makes it a memcmp(). Names are ASCII identifiers,
-- whose byte order is also the natural one. COPY into telemetry measured 10-15% faster.
-- The type stays text, so no table is rewritten; the indexes on these columns are rebuilt.
ALTER TABLE telemetry ALTER COLUMN metric TYPE text COLLATE "C";
ALTER TABLE telemetry_1m ALTER COLUMN metric TYPE text COLLATE "C";
ALTER TABLE telemetry_1h ALTER COLUMN metric TYPE text COLLATE "C";
ALTER TABLE telemetry_latest ALTER COLUMN metric TYPE text COLLATE "C";
-- Rules are matched against the tables above; one collation on both sides keeps the comparisons valid.
ALTER TABLE alert_rules ALTER COLUMN metric TYPE text COLLATE "C";
