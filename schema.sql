-- One table per integration (its entity) and one shared, append-only events table.
-- Times are epoch seconds: created_at/updated_at as REAL (sub-second FIFO order),
-- started_at as INTEGER (set at each claim). retry_at: when a retryable failure may be
-- claimed again (backoff). attempts_refunded: claims handed back because the integration was
-- blocked; the attempt limit counts attempts - attempts_refunded. dispatched_at is set when the
-- processor confirms that the claim's workflow is started: from then on Temporal owns the
-- attempt and the claim is never "stuck". cancel_requested_at: a client or operator asked to
-- cancel the active task; cancel_sent_at: a processor was last handed that cancel to deliver to
-- Temporal (re-sent while the task stays active). request_params/result are JSON text.

CREATE TABLE IF NOT EXISTS video_tasks (
    id                  TEXT PRIMARY KEY,
    status              TEXT NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'queued', 'processing', 'completed', 'failed', 'cancelled')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    started_at          INTEGER,
    request_params      TEXT NOT NULL,
    external_id         TEXT,
    result              TEXT,
    error               TEXT,
    retryable           INTEGER NOT NULL DEFAULT 1,
    dispatched_at       REAL,
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL,
    retry_at            REAL,
    attempts_refunded   INTEGER NOT NULL DEFAULT 0,
    cancel_requested_at REAL,
    cancel_sent_at      REAL
);

CREATE TABLE IF NOT EXISTS image_tasks (
    id                  TEXT PRIMARY KEY,
    status              TEXT NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'queued', 'processing', 'completed', 'failed', 'cancelled')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    started_at          INTEGER,
    request_params      TEXT NOT NULL,
    external_id         TEXT,
    result              TEXT,
    error               TEXT,
    retryable           INTEGER NOT NULL DEFAULT 1,
    dispatched_at       REAL,
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL,
    retry_at            REAL,
    attempts_refunded   INTEGER NOT NULL DEFAULT 0,
    cancel_requested_at REAL,
    cancel_sent_at      REAL
);

-- fetchPendingTasks runs one indexed range per claimable kind, each read in index
-- order and cut by LIMIT, so its cost follows the batch size, not the table size
-- (see task_store.fetch_claimable):
--   pending          (status, created_at)              the backlog, FIFO
--   retry due        (retryable, retry_at) over failures, due ones oldest-due first; a task
--                    failed for good (rejected, out of attempts) has retryable = 0, never read
--   stuck queued     (status, dispatched_at, started_at) undispatched claims, oldest first
--   expire sweep     (status, attempts, started_at)  claims with no attempts left
-- and the processors' cancel worklist is a partial index over the active tasks whose cancel is
-- asked for (task_store.take_cancels).
CREATE INDEX IF NOT EXISTS video_tasks_status_created ON video_tasks (status, created_at);
CREATE INDEX IF NOT EXISTS video_tasks_status_started ON video_tasks (status, dispatched_at, started_at);
CREATE INDEX IF NOT EXISTS video_tasks_retry_due ON video_tasks (retryable, retry_at) WHERE status = 'failed';
CREATE INDEX IF NOT EXISTS video_tasks_status_attempts ON video_tasks (status, attempts, started_at);
CREATE INDEX IF NOT EXISTS video_tasks_cancel_due ON video_tasks (cancel_sent_at)
    WHERE cancel_requested_at IS NOT NULL AND status IN ('queued', 'processing');

CREATE INDEX IF NOT EXISTS image_tasks_status_created ON image_tasks (status, created_at);
CREATE INDEX IF NOT EXISTS image_tasks_status_started ON image_tasks (status, dispatched_at, started_at);
CREATE INDEX IF NOT EXISTS image_tasks_retry_due ON image_tasks (retryable, retry_at) WHERE status = 'failed';
CREATE INDEX IF NOT EXISTS image_tasks_status_attempts ON image_tasks (status, attempts, started_at);
CREATE INDEX IF NOT EXISTS image_tasks_cancel_due ON image_tasks (cancel_sent_at)
    WHERE cancel_requested_at IS NOT NULL AND status IN ('queued', 'processing');

CREATE TABLE IF NOT EXISTS task_events (
    id          INTEGER PRIMARY KEY,
    namespace   TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    external_id TEXT,
    data        TEXT,
    error       TEXT,
    created_at  REAL NOT NULL
);

CREATE INDEX IF NOT EXISTS task_events_task ON task_events (task_id, id);

-- A blocked integration (docs/design.md §3.4): nothing of it is claimed but one probe per interval.
CREATE TABLE IF NOT EXISTS integration_blocks (
    integration TEXT PRIMARY KEY,
    reason      TEXT NOT NULL,
    code        TEXT,
    task_id     TEXT,
    since       REAL NOT NULL,
    probe_at    REAL NOT NULL,
    updated_at  REAL NOT NULL
);

-- Idempotency-Key on create (docs/design.md §5): a key and body seen within 24 h answer the same task.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys (created_at);

-- Append-only: every accepted transition is history, never rewritten. Events are deleted only with
-- their task, when retention prunes it whole (0008): the task's row first, then its events.
CREATE TRIGGER IF NOT EXISTS task_events_no_update BEFORE UPDATE ON task_events
BEGIN SELECT RAISE(ABORT, 'task_events is append-only'); END;
CREATE TRIGGER IF NOT EXISTS task_events_no_delete BEFORE DELETE ON task_events
WHEN EXISTS (SELECT 1 FROM video_tasks WHERE id = OLD.task_id)
  OR EXISTS (SELECT 1 FROM image_tasks WHERE id = OLD.task_id)
BEGIN SELECT RAISE(ABORT, 'task_events is append-only: events are deleted only with their task (prune)'); END;


-- The dashboard's counts without a scan (docs/design.md §5): each task table's count per status, kept
-- exact by triggers, and tasks created/completed/failed/cancelled per minute (a day of them).
CREATE TABLE IF NOT EXISTS task_counts (
    tbl    TEXT NOT NULL,
    status TEXT NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (tbl, status)
);
CREATE TRIGGER IF NOT EXISTS video_tasks_count_insert AFTER INSERT ON video_tasks
BEGIN
    INSERT INTO task_counts (tbl, status, n) VALUES ('video_tasks', NEW.status, 1)
        ON CONFLICT (tbl, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS video_tasks_count_update AFTER UPDATE OF status ON video_tasks WHEN OLD.status IS NOT NEW.status
BEGIN
    UPDATE task_counts SET n = n - 1 WHERE tbl = 'video_tasks' AND status = OLD.status;
    INSERT INTO task_counts (tbl, status, n) VALUES ('video_tasks', NEW.status, 1)
        ON CONFLICT (tbl, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS video_tasks_count_delete AFTER DELETE ON video_tasks
BEGIN
    UPDATE task_counts SET n = n - 1 WHERE tbl = 'video_tasks' AND status = OLD.status;
END;
CREATE TRIGGER IF NOT EXISTS image_tasks_count_insert AFTER INSERT ON image_tasks
BEGIN
    INSERT INTO task_counts (tbl, status, n) VALUES ('image_tasks', NEW.status, 1)
        ON CONFLICT (tbl, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS image_tasks_count_update AFTER UPDATE OF status ON image_tasks WHEN OLD.status IS NOT NEW.status
BEGIN
    UPDATE task_counts SET n = n - 1 WHERE tbl = 'image_tasks' AND status = OLD.status;
    INSERT INTO task_counts (tbl, status, n) VALUES ('image_tasks', NEW.status, 1)
        ON CONFLICT (tbl, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS image_tasks_count_delete AFTER DELETE ON image_tasks
BEGIN
    UPDATE task_counts SET n = n - 1 WHERE tbl = 'image_tasks' AND status = OLD.status;
END;

CREATE TABLE IF NOT EXISTS task_minutes (
    minute    INTEGER NOT NULL,
    namespace TEXT NOT NULL,
    kind      TEXT NOT NULL,
    n         INTEGER NOT NULL,
    PRIMARY KEY (minute, namespace, kind)
);
CREATE TRIGGER IF NOT EXISTS task_events_per_minute AFTER INSERT ON task_events
WHEN NEW.status IN ('completed', 'failed', 'cancelled') OR (NEW.status = 'pending' AND NEW.attempt = 0)
BEGIN
    INSERT INTO task_minutes (minute, namespace, kind, n)
        VALUES (CAST(NEW.created_at / 60 AS INTEGER), NEW.namespace,
                CASE NEW.status WHEN 'pending' THEN 'created' ELSE NEW.status END, 1)
        ON CONFLICT (minute, namespace, kind) DO UPDATE SET n = n + 1;
    DELETE FROM task_minutes WHERE minute < CAST(NEW.created_at / 60 AS INTEGER) - 1440;
END;
