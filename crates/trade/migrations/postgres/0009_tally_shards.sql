-- Tally cells split into shards. Every shipment create, delete and move shifts a cell of its
-- organization, and the upsert holds that row's lock until the transaction commits: with one
-- row per cell, an organization's creates (all into draft/pending) queued on that one row.
-- A write now shifts one of several shard rows of the cell, picked at random, so concurrent
-- writes rarely meet; a cell's count is the sum of its shards (a shard alone may go negative:
-- a shipment counted into one shard can be moved out of another). Existing counts become
-- shard 0.

ALTER TABLE trade_shipment_tallies ADD COLUMN shard SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE trade_shipment_tallies DROP CONSTRAINT trade_shipment_tallies_pkey;
ALTER TABLE trade_shipment_tallies ADD PRIMARY KEY (org_id, status, ebrc_status, shard);
