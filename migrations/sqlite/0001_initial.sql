-- 0001: the schema of the first release, commit 3b50bad, verbatim (its schema.sql).

-- One table per integration (its entity) and one shared, append-only events table.
-- Times are epoch seconds: created_at/updated_at as REAL (sub-second FIFO order),
-- started_at as INTEGER (set at each claim). request_params/result are JSON text.

CREATE TABLE IF NOT EXISTS video_tasks (
    id             TEXT PRIMARY KEY,
    status         TEXT NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'queued', 'processing', 'completed', 'failed')),
    attempts       INTEGER NOT NULL DEFAULT 0,
    started_at     INTEGER,
    request_params TEXT NOT NULL,
    external_id    TEXT,
    result         TEXT,
    error          TEXT,
    retryable      INTEGER NOT NULL DEFAULT 1,
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS image_tasks (
    id             TEXT PRIMARY KEY,
    status         TEXT NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'queued', 'processing', 'completed', 'failed')),
    attempts       INTEGER NOT NULL DEFAULT 0,
    started_at     INTEGER,
    request_params TEXT NOT NULL,
    external_id    TEXT,
    result         TEXT,
    error          TEXT,
    retryable      INTEGER NOT NULL DEFAULT 1,
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL
);

-- fetchPendingTasks runs one indexed range per claimable kind (see task_store.fetch_claimable):
--   pending:        (status, created_at)          walks the backlog in FIFO order
--   stuck queued:   (status, started_at)          only claims older than the stuck timeout
--   retry failed:   partial (attempts, created_at) over retryable failures only, so
--                   tasks failed for good are never read.
CREATE INDEX IF NOT EXISTS video_tasks_status_created ON video_tasks (status, created_at);
CREATE INDEX IF NOT EXISTS video_tasks_status_started ON video_tasks (status, started_at);
CREATE INDEX IF NOT EXISTS video_tasks_retryable_failed ON video_tasks (attempts, created_at)
    WHERE status = 'failed' AND retryable = 1;

CREATE INDEX IF NOT EXISTS image_tasks_status_created ON image_tasks (status, created_at);
CREATE INDEX IF NOT EXISTS image_tasks_status_started ON image_tasks (status, started_at);
CREATE INDEX IF NOT EXISTS image_tasks_retryable_failed ON image_tasks (attempts, created_at)
    WHERE status = 'failed' AND retryable = 1;

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

-- Append-only: every accepted transition is history, never rewritten.
CREATE TRIGGER IF NOT EXISTS task_events_no_update BEFORE UPDATE ON task_events
BEGIN SELECT RAISE(ABORT, 'task_events is append-only'); END;
CREATE TRIGGER IF NOT EXISTS task_events_no_delete BEFORE DELETE ON task_events
BEGIN SELECT RAISE(ABORT, 'task_events is append-only'); END;
