-- 0002: the fetch indexes of c44efa3 and 2f3308c. Failed-for-good is decided at write time
-- (retryable = 0), so retryable failures are one range of (retryable, created_at); the expire
-- sweep reads (status, attempts, started_at). They replace retryable_failed and queued_attempts.
--
-- Also run on databases from before versioning: each unversioned commit created its own indexes
-- with IF NOT EXISTS and dropped none, so any mix of the old and new ones may be there.

DROP INDEX IF EXISTS video_tasks_retryable_failed;
DROP INDEX IF EXISTS video_tasks_queued_attempts;
DROP INDEX IF EXISTS image_tasks_retryable_failed;
DROP INDEX IF EXISTS image_tasks_queued_attempts;

CREATE INDEX IF NOT EXISTS video_tasks_retry_due ON video_tasks (retryable, created_at) WHERE status = 'failed';
CREATE INDEX IF NOT EXISTS video_tasks_status_attempts ON video_tasks (status, attempts, started_at);
CREATE INDEX IF NOT EXISTS image_tasks_retry_due ON image_tasks (retryable, created_at) WHERE status = 'failed';
CREATE INDEX IF NOT EXISTS image_tasks_status_attempts ON image_tasks (status, attempts, started_at);
