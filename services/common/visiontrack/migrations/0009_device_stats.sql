-- Readings stored per device and minute (GET /api/devices/{id}/stats), counted by the aggregator in the
-- transaction that stores them, from the rows really inserted, so a redelivered batch adds nothing. One
-- upsert per device per batch. Minutes older than two hours are folded into one row per device at
-- '-infinity' (aggregator.compact_device_stats), so a device keeps about 120 rows however old it is.
-- Rows go with the device's purge. No foreign key: readings of a device deleted while they were still in
-- the stream are stored, counted, then purged.
CREATE TABLE device_stats (
    device_id bigint NOT NULL,
    bucket timestamptz NOT NULL,
    stored bigint NOT NULL,
    PRIMARY KEY (device_id, bucket)
);
