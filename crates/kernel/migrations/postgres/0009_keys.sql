-- Key rotation progress: one row per target key and encrypted column, so an interrupted
-- `keel keys rotate` resumes after the last row it re-encrypted. Platform data (no org):
-- rotation walks every organization's rows.
CREATE TABLE key_rotation_progress (
    target_kid TEXT NOT NULL,
    table_name TEXT NOT NULL,
    column_name TEXT NOT NULL,
    last_id UUID,
    rows_rotated BIGINT NOT NULL,
    rows_failed BIGINT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    PRIMARY KEY (target_kid, table_name, column_name)
);
