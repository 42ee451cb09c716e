-- A trigram index of `trade_shipments.search` (reference and buyer name, lower case), so a
-- free-text search (`q` of 3 characters or more, `search LIKE '%term%'`) can find the rows
-- that contain the term without reading every row of the organization; the planner
-- chooses between it and the organization's ordered indexes from the term's estimated
-- matches. It needs the pg_trgm extension (shipped with PostgreSQL, trusted: a role with
-- CREATE on the database may install it). Where the extension is already installed, in
-- whatever schema, that one is used; where it cannot be installed, the index is left out
-- with a notice and search reads the organization's rows, as before.

DO $$
DECLARE
    trgm_schema TEXT;
BEGIN
    SELECT n.nspname INTO trgm_schema
    FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname = 'pg_trgm';
    IF trgm_schema IS NULL THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public;
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'pg_trgm cannot be installed (%); free-text search reads every row', SQLERRM;
        END;
        SELECT n.nspname INTO trgm_schema
        FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
        WHERE e.extname = 'pg_trgm';
    END IF;
    IF trgm_schema IS NOT NULL THEN
        EXECUTE format(
            'CREATE INDEX trade_shipments_search_trgm ON trade_shipments '
            'USING gin (search %I.gin_trgm_ops) WHERE deleted_at IS NULL',
            trgm_schema
        );
    END IF;
END
$$;
