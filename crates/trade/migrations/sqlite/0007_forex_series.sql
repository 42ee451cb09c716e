-- One row per (organization, currency) with rates: the series a new rate joins. Recording a
-- rate upserts its series row first, in the rate's transaction, so rates of one currency are
-- recorded one after the other and each is compared with the rates committed before it (on
-- PostgreSQL the upsert holds the row lock until commit; SQLite serializes writers anyway).
-- `rates` counts the series' rates.

CREATE TABLE trade_forex_series (
    org_id BLOB NOT NULL,
    currency TEXT NOT NULL,
    rates INTEGER NOT NULL,
    PRIMARY KEY (org_id, currency)
);

INSERT INTO trade_forex_series (org_id, currency, rates)
SELECT org_id, currency, COUNT(*) FROM trade_forex_rates GROUP BY org_id, currency;
