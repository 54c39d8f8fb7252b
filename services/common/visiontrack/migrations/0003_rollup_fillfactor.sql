-- Room on each page for the rollup and latest-value rows' updates, so they are HOT updates (no index
-- change, the page pruned in place): every batch updates the current hour's rows, the latest values and the
-- current minutes' rows again and again. Existing pages keep their fill; new ones follow the setting.

ALTER TABLE telemetry_latest SET (fillfactor = 50);

CREATE OR REPLACE FUNCTION vt_ensure_telemetry_partition(day date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    raw_part  text := format('telemetry_%s', to_char(day, 'YYYYMMDD'));
    m_part    text := format('telemetry_1m_%s', to_char(day, 'YYYYMMDD'));
    h_part    text := format('telemetry_1h_%s', to_char(day, 'YYYYMM'));
    lo        timestamptz := (day::timestamp AT TIME ZONE 'UTC');
    month_lo  timestamptz := (date_trunc('month', day::timestamp) AT TIME ZONE 'UTC');
    month_hi  timestamptz := ((date_trunc('month', day::timestamp) + interval '1 month') AT TIME ZONE 'UTC');
    created   boolean := false;
BEGIN
    IF to_regclass(raw_part) IS NOT NULL AND to_regclass(m_part) IS NOT NULL AND to_regclass(h_part) IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('vt_telemetry_partition'));
    IF to_regclass(raw_part) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF telemetry FOR VALUES FROM (%L) TO (%L)',
                       raw_part, lo, lo + interval '1 day');
        created := true;
    END IF;
    IF to_regclass(m_part) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF telemetry_1m FOR VALUES FROM (%L) TO (%L) '
                       'WITH (fillfactor = 70)', m_part, lo, lo + interval '1 day');
    END IF;
    IF to_regclass(h_part) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF telemetry_1h FOR VALUES FROM (%L) TO (%L) '
                       'WITH (fillfactor = 50)', h_part, month_lo, month_hi);
    END IF;
    RETURN created;
END
$$;

DO $$
DECLARE
    part record;
BEGIN
    FOR part IN SELECT c.relname, p.relname AS parent FROM pg_inherits i
                JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
                WHERE p.relname IN ('telemetry_1m', 'telemetry_1h') LOOP
        EXECUTE format('ALTER TABLE %I SET (fillfactor = %s)', part.relname,
                       CASE part.parent WHEN 'telemetry_1m' THEN 70 ELSE 50 END);
    END LOOP;
END
$$;
