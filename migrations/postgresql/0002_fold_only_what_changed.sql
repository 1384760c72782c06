-- The dashboard counters' fold rewrote every task_minutes row (up to a day of minutes, ~11k rows) each time it
-- ran, every few seconds per process on the write paths. Only keys with delta rows are folded now; minutes older
-- than a day are deleted through the minute index; every other row is left untouched (no dead tuples).
CREATE OR REPLACE FUNCTION fold_task_counts() RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    newest BIGINT;
BEGIN
    IF NOT pg_try_advisory_xact_lock(7261847201) THEN
        RETURN false;
    END IF;
    WITH gone AS (DELETE FROM task_counts RETURNING tbl, status, n)
    INSERT INTO task_counts (tbl, status, n) SELECT tbl, status, SUM(n) FROM gone GROUP BY tbl, status;
    SELECT max(minute) INTO newest FROM task_minutes;
    DELETE FROM task_minutes WHERE minute < newest - 1440;
    WITH changed AS (
        SELECT minute, namespace, kind FROM task_minutes GROUP BY minute, namespace, kind HAVING count(*) > 1
    ), gone AS (
        DELETE FROM task_minutes t USING changed c
        WHERE t.minute = c.minute AND t.namespace = c.namespace AND t.kind = c.kind
        RETURNING t.minute, t.namespace, t.kind, t.n
    )
    INSERT INTO task_minutes (minute, namespace, kind, n)
        SELECT minute, namespace, kind, SUM(n) FROM gone GROUP BY minute, namespace, kind;
    RETURN true;
END $$;
