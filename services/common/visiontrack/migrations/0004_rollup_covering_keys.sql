-- Aggregate queries read a series' rollup rows over a range (1,440 one-minute rows for a day, 720 one-hour
-- rows for a month). Those rows lie one per page or so in the heap (every batch writes every series'
-- current rows), so the values ride in the primary key's index instead: an index-only scan reads a few
-- leaf pages. The updates of a batch then change the index as well (no HOT), a small cost next to the
-- random heap reads it saves every query.

ALTER TABLE telemetry_1m DROP CONSTRAINT telemetry_1m_pkey;
ALTER TABLE telemetry_1m ADD PRIMARY KEY (device_id, metric, bucket) INCLUDE (count, sum, min, max);
ALTER TABLE telemetry_1h DROP CONSTRAINT telemetry_1h_pkey;
ALTER TABLE telemetry_1h ADD PRIMARY KEY (device_id, metric, bucket) INCLUDE (count, sum, min, max);
