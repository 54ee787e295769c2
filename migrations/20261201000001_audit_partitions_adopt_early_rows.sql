-- A row dated ahead of the partitions made so far (a gateway whose clock runs far ahead) lands
-- in the default partition, and then the day's partition can no longer be created there: the
-- default would hold rows of its range. Each missing day is now created apart from the rest
-- (one failure no longer undoes the others) and takes those rows over: built as a table of its
-- own, filled with the day's rows moved out of the default partition, then attached.
CREATE OR REPLACE FUNCTION portcullis_ensure_audit_partitions(from_day date, days integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    d date;
    part text;
    lo timestamptz;
    hi timestamptz;
BEGIN
    FOR i IN 0 .. days - 1 LOOP
        d := from_day + i;
        part := 'audit_events_' || to_char(d, 'YYYYMMDD');
        lo := d::timestamp AT TIME ZONE 'UTC';
        hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        BEGIN
            EXECUTE format('CREATE TABLE %I (LIKE audit_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
            EXECUTE format(
                'WITH moved AS (DELETE FROM audit_events_default WHERE ts >= %L AND ts < %L RETURNING *)
                 INSERT INTO %I SELECT * FROM moved', lo, hi, part);
            EXECUTE format('ALTER TABLE audit_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'cannot create audit partition %: %', part, SQLERRM;
        END;
    END LOOP;
END;
$$;
