-- Readings stored per device and 5-minute bucket (GET /api/devices/{id}/stats), counted by the aggregator
-- in the transaction that stores them, from the rows really inserted, so a redelivered batch adds nothing.
-- One upsert per device per batch. Buckets older than two hours are folded into one row per device at
-- '-infinity' (aggregator.compact_device_stats), so a device keeps about 25 rows however old it is.
-- Rows go with the device's purge. No foreign key: readings of a device deleted while they were still in
-- the stream are stored, counted, then purged.
-- Every batch updates the current bucket's row of each of its devices again: room on each page keeps those
-- updates HOT (no index change, the page pruned in place), as 0003 does for the rollups.
CREATE TABLE device_stats (
    device_id bigint NOT NULL,
    bucket timestamptz NOT NULL,
    stored bigint NOT NULL,
    PRIMARY KEY (device_id, bucket)
) WITH (fillfactor = 50);
