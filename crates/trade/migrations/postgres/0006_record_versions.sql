-- Every resource the API shows carries `updated_at` and `version`: payments, forex rates,
-- forex alerts and exports gain them. Rows written before this migration take their
-- creation time (an export: its completion time, if any) and version 1.

ALTER TABLE trade_payments ADD COLUMN updated_at TIMESTAMPTZ;
UPDATE trade_payments SET updated_at = created_at;
ALTER TABLE trade_payments ALTER COLUMN updated_at SET NOT NULL;
ALTER TABLE trade_payments ADD COLUMN version BIGINT NOT NULL DEFAULT 1;

ALTER TABLE trade_forex_rates ADD COLUMN updated_at TIMESTAMPTZ;
UPDATE trade_forex_rates SET updated_at = created_at;
ALTER TABLE trade_forex_rates ALTER COLUMN updated_at SET NOT NULL;
ALTER TABLE trade_forex_rates ADD COLUMN version BIGINT NOT NULL DEFAULT 1;

ALTER TABLE trade_forex_alerts ADD COLUMN updated_at TIMESTAMPTZ;
UPDATE trade_forex_alerts SET updated_at = created_at;
ALTER TABLE trade_forex_alerts ALTER COLUMN updated_at SET NOT NULL;
ALTER TABLE trade_forex_alerts ADD COLUMN version BIGINT NOT NULL DEFAULT 1;

ALTER TABLE trade_exports ADD COLUMN updated_at TIMESTAMPTZ;
UPDATE trade_exports SET updated_at = COALESCE(completed_at, created_at);
ALTER TABLE trade_exports ALTER COLUMN updated_at SET NOT NULL;
ALTER TABLE trade_exports ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
