-- 0009 (numbered 0008 on the dashboard branch until the retention migration lands):
-- the dashboard's counts without a scan. task_counts holds each task table's count per status, kept
-- exact by triggers (insert, status change, delete); task_minutes the tasks created, completed, failed
-- and cancelled per minute and integration, fed by a trigger on task_events and trimmed to a day.
-- Each trigger is one upsert on a tiny table: a few microseconds on every write (docs/design.md §5, the dashboard).

CREATE TABLE task_counts (
    tbl    TEXT NOT NULL,
    status TEXT NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (tbl, status)
);

INSERT INTO task_counts (tbl, status, n) SELECT 'video_tasks', status, COUNT(*) FROM video_tasks GROUP BY status;
INSERT INTO task_counts (tbl, status, n) SELECT 'image_tasks', status, COUNT(*) FROM image_tasks GROUP BY status;

CREATE TRIGGER video_tasks_count_insert AFTER INSERT ON video_tasks
BEGIN
    INSERT INTO task_counts (tbl, status, n) VALUES ('video_tasks', NEW.status, 1)
        ON CONFLICT (tbl, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER video_tasks_count_update AFTER UPDATE OF status ON video_tasks WHEN OLD.status IS NOT NEW.status
BEGIN
    UPDATE task_counts SET n = n - 1 WHERE tbl = 'video_tasks' AND status = OLD.status;
    INSERT INTO task_counts (tbl, status, n) VALUES ('video_tasks', NEW.status, 1)
        ON CONFLICT (tbl, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER video_tasks_count_delete AFTER DELETE ON video_tasks
BEGIN
    UPDATE task_counts SET n = n - 1 WHERE tbl = 'video_tasks' AND status = OLD.status;
END;

CREATE TRIGGER image_tasks_count_insert AFTER INSERT ON image_tasks
BEGIN
    INSERT INTO task_counts (tbl, status, n) VALUES ('image_tasks', NEW.status, 1)
        ON CONFLICT (tbl, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER image_tasks_count_update AFTER UPDATE OF status ON image_tasks WHEN OLD.status IS NOT NEW.status
BEGIN
    UPDATE task_counts SET n = n - 1 WHERE tbl = 'image_tasks' AND status = OLD.status;
    INSERT INTO task_counts (tbl, status, n) VALUES ('image_tasks', NEW.status, 1)
        ON CONFLICT (tbl, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER image_tasks_count_delete AFTER DELETE ON image_tasks
BEGIN
    UPDATE task_counts SET n = n - 1 WHERE tbl = 'image_tasks' AND status = OLD.status;
END;

-- kind: created (a task's first event: pending at attempt 0), completed, failed (every failed attempt,
-- retried or not), cancelled. minute: epoch seconds // 60.
CREATE TABLE task_minutes (
    minute    INTEGER NOT NULL,
    namespace TEXT NOT NULL,
    kind      TEXT NOT NULL,
    n         INTEGER NOT NULL,
    PRIMARY KEY (minute, namespace, kind)
);

INSERT INTO task_minutes (minute, namespace, kind, n)
    SELECT CAST(created_at / 60 AS INTEGER), namespace, CASE status WHEN 'pending' THEN 'created' ELSE status END,
           COUNT(*)
    FROM task_events
    WHERE created_at >= unixepoch() - 86400
      AND (status IN ('completed', 'failed', 'cancelled') OR (status = 'pending' AND attempt = 0))
    GROUP BY 1, 2, 3;

CREATE TRIGGER task_events_per_minute AFTER INSERT ON task_events
WHEN NEW.status IN ('completed', 'failed', 'cancelled') OR (NEW.status = 'pending' AND NEW.attempt = 0)
BEGIN
    INSERT INTO task_minutes (minute, namespace, kind, n)
        VALUES (CAST(NEW.created_at / 60 AS INTEGER), NEW.namespace,
                CASE NEW.status WHEN 'pending' THEN 'created' ELSE NEW.status END, 1)
        ON CONFLICT (minute, namespace, kind) DO UPDATE SET n = n + 1;
    DELETE FROM task_minutes WHERE minute < CAST(NEW.created_at / 60 AS INTEGER) - 1440;
END;
