-- Trade documents: a shipment's files. The content lives in the kernel's file storage
-- (`keel_files`, addressed by organization and SHA-256); a row here says which shipment it
-- belongs to, as what type, and which kernel extraction read it last.

CREATE TABLE trade_documents (
    id BLOB PRIMARY KEY NOT NULL,
    org_id BLOB NOT NULL,
    shipment_id BLOB NOT NULL REFERENCES trade_shipments (id),
    doc_type TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    file_name TEXT,
    content_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    extraction_id BLOB,
    extraction_status TEXT,
    created_by TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version INTEGER NOT NULL
);
CREATE INDEX trade_documents_shipment ON trade_documents (org_id, shipment_id, created_at, id);
CREATE INDEX trade_documents_file ON trade_documents (org_id, sha256);
