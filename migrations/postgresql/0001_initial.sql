-- PostgreSQL 0001: the whole schema of SQLite's 0001..0009 in PostgreSQL terms (migrations/README.md).
-- Applied by `flask --app app db upgrade` in one transaction under pg_advisory_xact_lock (web/db.py); the
-- version is the one row of schema_version, which the runner keeps.
--
-- The same epoch-seconds numbers as on SQLite: created_at/updated_at/... DOUBLE PRECISION, started_at BIGINT
-- (bind its cutoffs as integers, or the planner casts the column and leaves the index). retryable is 0/1
-- (decide() writes integers). JSON is JSONB; the app reads it back as text (web/pg.py), as on SQLite.
--
-- The claim path reads one small partial index per claimable kind (pending, retry due, undispatched claims),
-- each in the order the claim takes it, so `ORDER BY ... LIMIT n FOR UPDATE SKIP LOCKED` walks only
-- claimable rows however long the history is; (status, created_at, id) serves lists, counts of the active
-- statuses, the reconciler's pages and retention. Autovacuum is tuned per table: every claim and report is
-- a non-HOT update (status is in the claim indexes' predicates), so dead rows pile up at the queue's head.

CREATE TABLE video_tasks (
    id                  TEXT PRIMARY KEY,
    status              TEXT NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'queued', 'processing', 'completed', 'failed', 'cancelled')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    started_at          BIGINT,
    request_params      JSONB NOT NULL,
    external_id         TEXT,
    result              JSONB,
    error               TEXT,
    retryable           SMALLINT NOT NULL DEFAULT 1 CHECK (retryable IN (0, 1)),
    dispatched_at       DOUBLE PRECISION,
    created_at          DOUBLE PRECISION NOT NULL,
    updated_at          DOUBLE PRECISION NOT NULL,
    retry_at            DOUBLE PRECISION,
    attempts_refunded   INTEGER NOT NULL DEFAULT 0,
    cancel_requested_at DOUBLE PRECISION,
    cancel_sent_at      DOUBLE PRECISION
) WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
        autovacuum_analyze_scale_factor = 0.02);

CREATE INDEX video_tasks_pending ON video_tasks (created_at) WHERE status = 'pending';
CREATE INDEX video_tasks_retry_due ON video_tasks (retry_at) WHERE status = 'failed' AND retryable = 1;
CREATE INDEX video_tasks_undispatched ON video_tasks (started_at) WHERE status = 'queued' AND dispatched_at IS NULL;
CREATE INDEX video_tasks_status_created ON video_tasks (status, created_at, id);
CREATE INDEX video_tasks_cancel_due ON video_tasks (cancel_sent_at)
    WHERE cancel_requested_at IS NOT NULL AND status IN ('queued', 'processing');

CREATE TABLE image_tasks (
    id                  TEXT PRIMARY KEY,
    status              TEXT NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'queued', 'processing', 'completed', 'failed', 'cancelled')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    started_at          BIGINT,
    request_params      JSONB NOT NULL,
    external_id         TEXT,
    result              JSONB,
    error               TEXT,
    retryable           SMALLINT NOT NULL DEFAULT 1 CHECK (retryable IN (0, 1)),
    dispatched_at       DOUBLE PRECISION,
    created_at          DOUBLE PRECISION NOT NULL,
    updated_at          DOUBLE PRECISION NOT NULL,
    retry_at            DOUBLE PRECISION,
    attempts_refunded   INTEGER NOT NULL DEFAULT 0,
    cancel_requested_at DOUBLE PRECISION,
    cancel_sent_at      DOUBLE PRECISION
) WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
        autovacuum_analyze_scale_factor = 0.02);

CREATE INDEX image_tasks_pending ON image_tasks (created_at) WHERE status = 'pending';
CREATE INDEX image_tasks_retry_due ON image_tasks (retry_at) WHERE status = 'failed' AND retryable = 1;
CREATE INDEX image_tasks_undispatched ON image_tasks (started_at) WHERE status = 'queued' AND dispatched_at IS NULL;
CREATE INDEX image_tasks_status_created ON image_tasks (status, created_at, id);
CREATE INDEX image_tasks_cancel_due ON image_tasks (cancel_sent_at)
    WHERE cancel_requested_at IS NOT NULL AND status IN ('queued', 'processing');

CREATE TABLE task_events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    namespace   TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    external_id TEXT,
    data        JSONB,
    error       TEXT,
    created_at  DOUBLE PRECISION NOT NULL
);
CREATE INDEX task_events_task ON task_events (task_id, id);

-- A blocked integration (docs/design.md §3.4): nothing of it is claimed but one probe per interval.
CREATE TABLE integration_blocks (
    integration TEXT PRIMARY KEY,
    reason      TEXT NOT NULL,
    code        TEXT,
    task_id     TEXT,
    since       DOUBLE PRECISION NOT NULL,
    probe_at    DOUBLE PRECISION NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL
);

-- Idempotency-Key on create (docs/design.md §5): a key and body seen within 24 h answer the same task.
CREATE TABLE idempotency_keys (
    scope       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Append-only (SQLite 0001, 0008): no UPDATE ever, no TRUNCATE, and a DELETE only of events whose task row
-- is gone from every task table (retention deletes the task row first, then its events).
CREATE FUNCTION task_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF EXISTS (SELECT 1 FROM video_tasks WHERE id = OLD.task_id)
           OR EXISTS (SELECT 1 FROM image_tasks WHERE id = OLD.task_id) THEN
            RAISE EXCEPTION 'task_events is append-only: events are deleted only with their task (prune)';
        END IF;
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'task_events is append-only';
END $$;
CREATE TRIGGER task_events_no_update BEFORE UPDATE ON task_events
    FOR EACH ROW EXECUTE FUNCTION task_events_append_only();
CREATE TRIGGER task_events_no_delete BEFORE DELETE ON task_events
    FOR EACH ROW EXECUTE FUNCTION task_events_append_only();
CREATE TRIGGER task_events_no_truncate BEFORE TRUNCATE ON task_events
    FOR EACH STATEMENT EXECUTE FUNCTION task_events_append_only();

-- The dashboard's counts without a scan (SQLite 0009), kept by triggers. On SQLite each trigger upserts one
-- counter row, which is free under its one write lock; here that row lock would serialise every claim and
-- report of a table until commit, and two transactions moving tasks between statuses in opposite orders
-- would deadlock. So a trigger only appends a delta row (no lock on anyone's row), readers add the rows up
-- (SUM ... GROUP BY), and fold_task_counts() folds the deltas into one row per key now and then
-- (task_store: on its write paths, claims and creates, at most every few seconds per process; a read only adds up).
CREATE TABLE task_counts (
    tbl    TEXT NOT NULL,
    status TEXT NOT NULL,
    n      BIGINT NOT NULL
);
CREATE INDEX task_counts_tbl ON task_counts (tbl, status);

CREATE FUNCTION task_counts_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO task_counts (tbl, status, n) VALUES (TG_TABLE_NAME, OLD.status, -1);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO task_counts (tbl, status, n) VALUES (TG_TABLE_NAME, NEW.status, 1);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER video_tasks_count_insert AFTER INSERT OR DELETE ON video_tasks
    FOR EACH ROW EXECUTE FUNCTION task_counts_track();
CREATE TRIGGER video_tasks_count_update AFTER UPDATE OF status ON video_tasks
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION task_counts_track();
CREATE TRIGGER image_tasks_count_insert AFTER INSERT OR DELETE ON image_tasks
    FOR EACH ROW EXECUTE FUNCTION task_counts_track();
CREATE TRIGGER image_tasks_count_update AFTER UPDATE OF status ON image_tasks
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION task_counts_track();

-- kind: created (a task's first event: pending at attempt 0), completed, failed (every failed attempt,
-- retried or not), cancelled. minute: epoch seconds // 60. Delta rows as for task_counts; a fold keeps a day.
CREATE TABLE task_minutes (
    minute    BIGINT NOT NULL,
    namespace TEXT NOT NULL,
    kind      TEXT NOT NULL,
    n         BIGINT NOT NULL
);
CREATE INDEX task_minutes_minute ON task_minutes (minute);

CREATE FUNCTION task_minutes_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_minutes (minute, namespace, kind, n)
        VALUES (floor(NEW.created_at / 60)::bigint, NEW.namespace,
                CASE NEW.status WHEN 'pending' THEN 'created' ELSE NEW.status END, 1);
    RETURN NULL;
END $$;
CREATE TRIGGER task_events_per_minute AFTER INSERT ON task_events
    FOR EACH ROW WHEN (NEW.status IN ('completed', 'failed', 'cancelled') OR (NEW.status = 'pending' AND NEW.attempt = 0))
    EXECUTE FUNCTION task_minutes_track();

-- Fold the delta rows: one row per key, minutes older than a day (before the newest) dropped. One folder at a
-- time (a transaction-level advisory lock; a busy one is skipped, not waited for); rows that writers add
-- meanwhile are not in the DELETE's snapshot and stay for the next fold.
CREATE FUNCTION fold_task_counts() RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    newest BIGINT;
BEGIN
    IF NOT pg_try_advisory_xact_lock(7261847201) THEN
        RETURN false;
    END IF;
    WITH gone AS (DELETE FROM task_counts RETURNING tbl, status, n)
    INSERT INTO task_counts (tbl, status, n) SELECT tbl, status, SUM(n) FROM gone GROUP BY tbl, status;
    SELECT max(minute) INTO newest FROM task_minutes;
    WITH gone AS (DELETE FROM task_minutes RETURNING minute, namespace, kind, n)
    INSERT INTO task_minutes (minute, namespace, kind, n)
        SELECT minute, namespace, kind, SUM(n) FROM gone WHERE minute >= newest - 1440 GROUP BY minute, namespace, kind;
    RETURN true;
END $$;
