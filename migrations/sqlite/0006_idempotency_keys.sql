-- 0006: `Idempotency-Key` on create. The same key and body from the same client within 24 h answer the
-- task the first request made; the same key with another body is refused (422). scope is a hash of the
-- client's key (keys are per client; no secret is stored), fingerprint a hash of the path and the body.

CREATE TABLE idempotency_keys (
    scope       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
