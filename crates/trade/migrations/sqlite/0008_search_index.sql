-- A trigram index of `trade_shipments.search` (reference and buyer name, lower case), so a
-- free-text search (`q` of 3 characters or more) finds the rows that contain the term
-- without reading every row of the organization. It is an FTS5 index over the shipments
-- table itself (external content: the text is stored once), kept by triggers in the same
-- transaction as every write. A phrase query of the trigram tokenizer matches exactly the
-- rows whose text contains the term; the list still tests `search LIKE` on every row it
-- returns, so the index only ever narrows what is read. Organization and visibility
-- filters stay on the shipments table. `INSERT INTO trade_shipments_search
-- (trade_shipments_search) VALUES ('rebuild')` rebuilds it from the table.

CREATE VIRTUAL TABLE trade_shipments_search USING fts5(
    search,
    content = 'trade_shipments',
    content_rowid = 'rowid',
    tokenize = 'trigram'
);

CREATE TRIGGER trade_shipments_search_insert AFTER INSERT ON trade_shipments BEGIN
    INSERT INTO trade_shipments_search (rowid, search) VALUES (new.rowid, new.search);
END;

CREATE TRIGGER trade_shipments_search_delete AFTER DELETE ON trade_shipments BEGIN
    INSERT INTO trade_shipments_search (trade_shipments_search, rowid, search)
    VALUES ('delete', old.rowid, old.search);
END;

CREATE TRIGGER trade_shipments_search_update AFTER UPDATE OF search ON trade_shipments
WHEN old.search IS NOT new.search BEGIN
    INSERT INTO trade_shipments_search (trade_shipments_search, rowid, search)
    VALUES ('delete', old.rowid, old.search);
    INSERT INTO trade_shipments_search (rowid, search) VALUES (new.rowid, new.search);
END;

INSERT INTO trade_shipments_search (trade_shipments_search) VALUES ('rebuild');
