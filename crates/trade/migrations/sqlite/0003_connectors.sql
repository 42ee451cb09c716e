-- Connectors (bank via Account Aggregator, GST, ICEGATE) and shipment exports. A consent id
-- is unique across organizations: the Account Aggregator webhook finds the connector (and so
-- the organization) by it, which is the one lookup that does not start from an
-- organization. Every other index leads with the organization.

CREATE TABLE trade_connectors (
    id BLOB PRIMARY KEY NOT NULL,
    org_id BLOB NOT NULL,
    kind TEXT NOT NULL,
    iec_code TEXT NOT NULL,
    consent_id TEXT,
    status TEXT NOT NULL,
    data_ready_at TEXT,
    last_event_at TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version INTEGER NOT NULL
);
CREATE UNIQUE INDEX trade_connectors_consent ON trade_connectors (consent_id)
    WHERE consent_id IS NOT NULL;
CREATE INDEX trade_connectors_org_created ON trade_connectors (org_id, created_at, id);

CREATE TABLE trade_exports (
    id BLOB PRIMARY KEY NOT NULL,
    org_id BLOB NOT NULL,
    partner_id BLOB,
    format TEXT NOT NULL,
    filter TEXT NOT NULL,
    status TEXT NOT NULL,
    job_id BLOB,
    row_count INTEGER,
    size_bytes INTEGER,
    sha256 TEXT,
    created_by TEXT,
    created_at TEXT NOT NULL,
    completed_at TEXT
);
CREATE INDEX trade_exports_org_created ON trade_exports (org_id, created_at, id);
