-- Payments received against shipments. The bank reference and account number are sealed
-- with the kernel key ring (`keel_kernel::crypto::field`, associated data
-- org|trade_payments|column|id): the columns hold ciphertext only. A shipment's
-- `realized_minor` is the sum of its payments, kept in the payment's transaction.

CREATE TABLE trade_payments (
    id UUID PRIMARY KEY NOT NULL,
    org_id UUID NOT NULL,
    shipment_id UUID NOT NULL REFERENCES trade_shipments (id),
    amount_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    received_on DATE NOT NULL,
    remitter TEXT NOT NULL,
    bank_reference TEXT NOT NULL,
    account_number TEXT NOT NULL,
    created_by TEXT,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX trade_payments_org_created ON trade_payments (org_id, created_at, id);
CREATE INDEX trade_payments_shipment ON trade_payments (org_id, shipment_id, created_at, id);
