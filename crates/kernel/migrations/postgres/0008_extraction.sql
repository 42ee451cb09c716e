-- File storage and document extraction (crates/kernel/src/storage, crates/kernel/src/extract).
-- Files are content-addressed per organization: one row per (organization, SHA-256); the
-- bytes live in the configured backend (a directory or an S3 bucket).
CREATE TABLE keel_files (
    org_id UUID NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    kind TEXT NOT NULL,
    content_type TEXT NOT NULL,
    file_name TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (org_id, sha256)
);
CREATE INDEX keel_files_org_created ON keel_files (org_id, created_at);

-- One extraction of a stored file: the engine's result as read (`result`), a reviewer's
-- corrected result beside it (`corrected`), and the status the two lead to.
CREATE TABLE keel_extractions (
    id UUID NOT NULL,
    org_id UUID NOT NULL,
    file_sha256 TEXT NOT NULL,
    document_type TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('queued', 'running', 'completed', 'review_required', 'failed')),
    job_id UUID,
    engine TEXT,
    confidence DOUBLE PRECISION,
    result JSONB,
    corrected JSONB,
    failure_reason TEXT,
    reviewed_by UUID,
    reviewed_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (org_id, id)
);
CREATE INDEX keel_extractions_org_file ON keel_extractions (org_id, file_sha256);
CREATE INDEX keel_extractions_org_created ON keel_extractions (org_id, created_at);
