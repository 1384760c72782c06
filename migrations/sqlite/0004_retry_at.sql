-- 0004: a retryable failure waits for its retry_at (exponential backoff with jitter) before it is
-- claimable again, so an outage spends time, not attempts. The retry index becomes a range of
-- retry_at over the retryable failures: the due ones are read oldest-due first, cut by LIMIT.

ALTER TABLE video_tasks ADD COLUMN retry_at REAL;
ALTER TABLE image_tasks ADD COLUMN retry_at REAL;

-- Failures already waiting for a retry were due at once under the previous release: they still are.
UPDATE video_tasks SET retry_at = updated_at WHERE status = 'failed' AND retryable = 1;
UPDATE image_tasks SET retry_at = updated_at WHERE status = 'failed' AND retryable = 1;

DROP INDEX video_tasks_retry_due;
DROP INDEX image_tasks_retry_due;
CREATE INDEX video_tasks_retry_due ON video_tasks (retryable, retry_at) WHERE status = 'failed';
CREATE INDEX image_tasks_retry_due ON image_tasks (retryable, retry_at) WHERE status = 'failed';
