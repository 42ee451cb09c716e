-- Trade documents: a shipment's files. The content lives in the kernel's file storage
-- (`keel_files`, addressed by organization and SHA-256); a row here says which shipment it
-- belongs to, as what type, and which kernel extraction read it last.

CREATE TABLE trade_documents (
    id UUID PRIMARY KEY NOT NULL,
    org_id UUID NOT NULL,
    shipment_id UUID NOT NULL REFERENCES trade_shipments (id),
    doc_type TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    file_name TEXT,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    extraction_id UUID,
    extraction_status TEXT,
    created_by TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX trade_documents_shipment ON trade_documents (org_id, shipment_id, created_at, id);
CREATE INDEX trade_documents_file ON trade_documents (org_id, sha256);
