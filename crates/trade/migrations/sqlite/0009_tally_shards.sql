-- Tally cells split into shards (see the PostgreSQL migration for why; SQLite has one writer
-- at a time, so Keel writes only shard 0 here, and the schema stays the same on both
-- engines). A cell's count is the sum of its shards. Existing counts become shard 0.

CREATE TABLE trade_shipment_tallies_sharded (
    org_id BLOB NOT NULL,
    status TEXT NOT NULL,
    ebrc_status TEXT NOT NULL,
    shard INTEGER NOT NULL DEFAULT 0,
    n INTEGER NOT NULL,
    PRIMARY KEY (org_id, status, ebrc_status, shard)
);
INSERT INTO trade_shipment_tallies_sharded (org_id, status, ebrc_status, shard, n)
SELECT org_id, status, ebrc_status, 0, n FROM trade_shipment_tallies;
DROP TABLE trade_shipment_tallies;
ALTER TABLE trade_shipment_tallies_sharded RENAME TO trade_shipment_tallies;
