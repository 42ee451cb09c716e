-- Idempotency keys: the first response to a keyed POST, replayed for retries (24 h).
CREATE TABLE idempotency_keys (
    org_id BLOB NOT NULL,
    user_id BLOB NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    locked_until TEXT NOT NULL,
    response TEXT,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    PRIMARY KEY (org_id, user_id, idem_key)
);
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);
