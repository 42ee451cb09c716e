-- Payments received against shipments. The bank reference and account number are sealed
-- with the kernel key ring (`keel_kernel::crypto::field`, associated data
-- org|trade_payments|column|id): the columns hold ciphertext only. A shipment's
-- `realized_minor` is the sum of its payments, kept in the payment's transaction.

CREATE TABLE trade_payments (
    id BLOB PRIMARY KEY NOT NULL,
    org_id BLOB NOT NULL,
    shipment_id BLOB NOT NULL REFERENCES trade_shipments (id),
    amount_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    received_on TEXT NOT NULL,
    remitter TEXT NOT NULL,
    bank_reference TEXT NOT NULL,
    account_number TEXT NOT NULL,
    created_by TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX trade_payments_org_created ON trade_payments (org_id, created_at, id);
CREATE INDEX trade_payments_shipment ON trade_payments (org_id, shipment_id, created_at, id);
