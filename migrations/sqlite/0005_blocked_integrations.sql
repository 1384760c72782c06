-- 0005: an integration the provider refuses for account-level reasons (credits, quota, account, feature)
-- is blocked: no task of it is claimed, except one probe per interval, until a create succeeds or an
-- operator resumes it. The claim that met the block is handed back: the task returns to pending and the
-- attempt is counted in attempts_refunded, so attempts stays the fence and attempts - attempts_refunded
-- is what the attempt limit counts.

ALTER TABLE video_tasks ADD COLUMN attempts_refunded INTEGER NOT NULL DEFAULT 0;
ALTER TABLE image_tasks ADD COLUMN attempts_refunded INTEGER NOT NULL DEFAULT 0;

CREATE TABLE integration_blocks (
    integration TEXT PRIMARY KEY,
    reason      TEXT NOT NULL,
    code        TEXT,
    task_id     TEXT,
    since       REAL NOT NULL,
    probe_at    REAL NOT NULL,
    updated_at  REAL NOT NULL
);
