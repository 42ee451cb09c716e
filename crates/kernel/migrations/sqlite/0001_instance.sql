-- The installation this database belongs to: one row, written at first start.
CREATE TABLE keel_instance (
    id BLOB PRIMARY KEY NOT NULL,
    created_at TEXT NOT NULL,
    created_by_version TEXT NOT NULL
);
