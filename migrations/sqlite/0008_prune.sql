-- 0008: retention (`flask --app app tasks prune`, RETENTION_DAYS). A finished task may be deleted whole:
-- its row, then its events and Idempotency-Keys, in one transaction (task_store.prune_finished). The
-- events table stays append-only for every task that still exists: no UPDATE ever, and a DELETE only
-- of events whose task row is gone from both task tables.

DROP TRIGGER task_events_no_delete;
CREATE TRIGGER task_events_no_delete BEFORE DELETE ON task_events
WHEN EXISTS (SELECT 1 FROM video_tasks WHERE id = OLD.task_id)
  OR EXISTS (SELECT 1 FROM image_tasks WHERE id = OLD.task_id)
BEGIN SELECT RAISE(ABORT, 'task_events is append-only: events are deleted only with their task (prune)'); END;
