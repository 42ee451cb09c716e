-- The installation this database belongs to: one row, written at first start.
CREATE TABLE keel_instance (
    id UUID PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL,
    created_by_version TEXT NOT NULL
);
