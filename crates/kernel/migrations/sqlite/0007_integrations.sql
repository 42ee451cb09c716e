-- Integrations: the LLM response cache (per organization), outgoing webhook endpoints with
-- their deliveries and attempt log, and the event ids of incoming webhooks (replay guard).

CREATE TABLE llm_cache (
    org_id BLOB NOT NULL,
    -- SHA-256 (hex) of organization, prompts, image hashes, model, temperature, provider.
    cache_key TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    response TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    response_ms INTEGER NOT NULL,
    hit_count INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    last_used_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    PRIMARY KEY (org_id, cache_key)
);
CREATE INDEX llm_cache_org_expiry ON llm_cache (org_id, expires_at);
-- The hourly cleanup deletes expired rows of every organization.
CREATE INDEX llm_cache_expiry ON llm_cache (expires_at);

CREATE TABLE webhook_endpoints (
    org_id BLOB NOT NULL,
    id BLOB NOT NULL,
    url TEXT NOT NULL,
    description TEXT,
    -- JSON array of audit actions, prefixes (`partner.*`) or `*`.
    event_types TEXT NOT NULL,
    -- Encrypted under the key ring (context binds organization and endpoint).
    secret TEXT NOT NULL,
    active INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (org_id, id)
);
CREATE INDEX webhook_endpoints_org_created ON webhook_endpoints (org_id, created_at);

CREATE TABLE webhook_deliveries (
    org_id BLOB NOT NULL,
    id BLOB NOT NULL,
    endpoint_id BLOB NOT NULL,
    event_id BLOB NOT NULL,
    event_type TEXT NOT NULL,
    -- The body exactly as sent (every attempt sends the same bytes).
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_status_code INTEGER,
    job_id BLOB,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    delivered_at TEXT,
    PRIMARY KEY (org_id, id)
);
-- One delivery per endpoint and event, however often the outbox hands the event over.
CREATE UNIQUE INDEX webhook_deliveries_once ON webhook_deliveries (org_id, endpoint_id, event_id);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (org_id, endpoint_id, created_at);

CREATE TABLE webhook_attempts (
    org_id BLOB NOT NULL,
    delivery_id BLOB NOT NULL,
    attempt INTEGER NOT NULL,
    status_code INTEGER,
    latency_ms INTEGER NOT NULL,
    response_snippet TEXT,
    error TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (org_id, delivery_id, attempt)
);

-- Incoming webhooks' event ids, per organization (the nil UUID for platform-wide senders)
-- and source; kept twice the timestamp tolerance.
CREATE TABLE webhook_receipts (
    org_id BLOB NOT NULL,
    source TEXT NOT NULL,
    event_id TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (org_id, source, event_id)
);
CREATE INDEX webhook_receipts_received ON webhook_receipts (received_at);
