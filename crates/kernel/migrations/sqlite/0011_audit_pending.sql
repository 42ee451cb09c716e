-- Audit events waiting for their place in the chain (PostgreSQL; the table exists on both
-- engines so the schema is the same, and SQLite never writes it).
--
-- On PostgreSQL an event commits with its change as a row here, not in the chain: appending
-- to the chain takes the organization's head row lock, and a lock taken inside the business
-- transaction is held until that transaction commits, so every write of one organization
-- used to queue behind the one before it. Right after the commit, a chaining pass (one per
-- organization at a time) moves every pending event of the organization into the chain in
-- one short transaction; the request waits for it, so its event is in the trail when it
-- answers. The outbox relay chains whatever a crashed node left here.
CREATE TABLE audit_pending (
    id BLOB PRIMARY KEY NOT NULL,
    org_id BLOB NOT NULL,
    -- The event's content as JSON (everything but its place in the chain).
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX audit_pending_org ON audit_pending (org_id, id);
CREATE INDEX audit_pending_created ON audit_pending (created_at);
