-- Every resource the API shows carries `updated_at` and `version`: payments, forex rates,
-- forex alerts and exports gain them. Rows written before this migration take their
-- creation time (an export: its completion time, if any) and version 1. SQLite cannot add a
-- NOT NULL column without a constant default, so `updated_at` gets '' for the moment of the
-- ALTER and is filled at once; every insert writes it.

ALTER TABLE trade_payments ADD COLUMN updated_at TEXT NOT NULL DEFAULT '';
ALTER TABLE trade_payments ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
UPDATE trade_payments SET updated_at = created_at;

ALTER TABLE trade_forex_rates ADD COLUMN updated_at TEXT NOT NULL DEFAULT '';
ALTER TABLE trade_forex_rates ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
UPDATE trade_forex_rates SET updated_at = created_at;

ALTER TABLE trade_forex_alerts ADD COLUMN updated_at TEXT NOT NULL DEFAULT '';
ALTER TABLE trade_forex_alerts ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
UPDATE trade_forex_alerts SET updated_at = created_at;

ALTER TABLE trade_exports ADD COLUMN updated_at TEXT NOT NULL DEFAULT '';
ALTER TABLE trade_exports ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
UPDATE trade_exports SET updated_at = COALESCE(completed_at, created_at);
