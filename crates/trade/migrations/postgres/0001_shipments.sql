-- Shipments and their tallies. Every list index leads with the organization and covers the
-- default order (created_at, id), so a page is an index range scan; soft-deleted drafts are
-- outside the partial indexes. `trade_shipment_tallies` holds the live shipments per
-- (organization, status, e-BRC status), kept by every write in the same transaction: list
-- totals read at most 24 rows instead of counting the organization's shipments.

CREATE TABLE trade_shipments (
    id UUID PRIMARY KEY NOT NULL,
    org_id UUID NOT NULL,
    reference TEXT NOT NULL,
    reference_key TEXT NOT NULL,
    buyer_partner_id UUID REFERENCES partners (id),
    buyer_name TEXT NOT NULL,
    buyer_country TEXT,
    destination_country TEXT NOT NULL,
    port_of_loading TEXT,
    port_of_discharge TEXT,
    incoterm TEXT,
    hs_codes TEXT NOT NULL,
    invoice_value_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    shipping_bill_number TEXT,
    shipping_bill_date DATE,
    export_type TEXT NOT NULL,
    status TEXT NOT NULL,
    ebrc_status TEXT NOT NULL,
    realized_minor BIGINT NOT NULL DEFAULT 0,
    search TEXT NOT NULL,
    created_by TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    version BIGINT NOT NULL,
    deleted_at TIMESTAMPTZ
);
CREATE UNIQUE INDEX trade_shipments_reference ON trade_shipments (org_id, reference_key)
    WHERE deleted_at IS NULL;
CREATE INDEX trade_shipments_org_created ON trade_shipments (org_id, created_at, id)
    WHERE deleted_at IS NULL;
CREATE INDEX trade_shipments_org_status ON trade_shipments (org_id, status, created_at, id)
    WHERE deleted_at IS NULL;
CREATE INDEX trade_shipments_org_ebrc ON trade_shipments (org_id, ebrc_status, created_at, id)
    WHERE deleted_at IS NULL;
CREATE INDEX trade_shipments_org_destination
    ON trade_shipments (org_id, destination_country, created_at, id) WHERE deleted_at IS NULL;
CREATE INDEX trade_shipments_org_reference ON trade_shipments (org_id, reference, id)
    WHERE deleted_at IS NULL;
CREATE INDEX trade_shipments_org_bill_date ON trade_shipments (org_id, shipping_bill_date)
    WHERE deleted_at IS NULL;
CREATE INDEX trade_shipments_org_buyer ON trade_shipments (org_id, buyer_partner_id, created_at, id)
    WHERE deleted_at IS NULL;

CREATE TABLE trade_shipment_tallies (
    org_id UUID NOT NULL,
    status TEXT NOT NULL,
    ebrc_status TEXT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (org_id, status, ebrc_status)
);
