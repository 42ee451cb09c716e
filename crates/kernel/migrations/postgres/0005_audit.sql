-- The audit trail: one append-only table of hash-chained events (a chain per organization;
-- the nil UUID is the platform chain), each chain's head, retention checkpoints (kept
-- forever) and the transactional outbox. `security_events` (0002) is no longer written:
-- security events are audit events now (actions `auth.*`); its rows are kept as they were.
--
-- JSON columns are TEXT, not JSONB: the hash is computed over the text as written, and JSONB
-- would reorder keys.

CREATE TABLE audit_events (
    id UUID NOT NULL,
    org_id UUID NOT NULL,
    seq BIGINT NOT NULL,
    actor_type TEXT NOT NULL,
    actor_id TEXT,
    action TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT,
    changes TEXT,
    detail TEXT,
    request_id TEXT,
    ip TEXT,
    user_agent TEXT,
    method TEXT,
    route TEXT,
    outcome TEXT NOT NULL,
    error_code TEXT,
    duration_ms BIGINT,
    created_at TIMESTAMPTZ NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (org_id, seq)
);
CREATE UNIQUE INDEX audit_events_id ON audit_events (org_id, id);
CREATE INDEX audit_events_org_created ON audit_events (org_id, created_at);
CREATE INDEX audit_events_org_action ON audit_events (org_id, action, seq);
CREATE INDEX audit_events_org_resource ON audit_events (org_id, resource_type, resource_id, seq);
CREATE INDEX audit_events_org_actor ON audit_events (org_id, actor_id, seq);

-- Each chain's last link; appends lock this row (SELECT … FOR UPDATE).
CREATE TABLE audit_heads (
    org_id UUID PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

-- Where retention cut each chain: events up to `seq` may be deleted; `hash` is the hash of
-- event `seq`, which the first remaining event links to.
CREATE TABLE audit_checkpoints (
    org_id UUID NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (org_id, seq)
);

CREATE TABLE audit_outbox (
    id UUID PRIMARY KEY,
    org_id UUID NOT NULL,
    event_id UUID NOT NULL,
    action TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    -- Due time: creation, then a claim's lease end, then a failed delivery's retry time.
    available_at TIMESTAMPTZ NOT NULL,
    delivered_at TIMESTAMPTZ,
    attempts BIGINT NOT NULL,
    last_error TEXT
);
CREATE INDEX audit_outbox_due ON audit_outbox (available_at) WHERE delivered_at IS NULL;
CREATE INDEX audit_outbox_delivered ON audit_outbox (delivered_at) WHERE delivered_at IS NOT NULL;

-- Append-only, enforced by the database: no update or truncate ever; a delete only of events
-- at or before their chain's latest checkpoint (what retention prunes). The checkpoint table
-- is resolved through the search path, like every other table of this schema.
CREATE FUNCTION keel_audit_events_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.seq <= COALESCE(
        (SELECT MAX(seq) FROM audit_checkpoints WHERE org_id = OLD.org_id), 0) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit events are append-only; only events behind a retention checkpoint can be deleted'
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION keel_audit_events_guard();

CREATE FUNCTION keel_audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION keel_audit_refuse();

CREATE TRIGGER audit_checkpoints_kept BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION keel_audit_refuse();

CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION keel_audit_refuse();
