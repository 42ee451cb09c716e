-- One row per (organization, currency) with rates: the series a new rate joins. Recording a
-- rate upserts its series row first, in the rate's transaction: the upsert holds the row lock
-- until commit, so two rates of one currency recorded at once are recorded one after the
-- other and each is compared with the rates committed before it (a plain-table lock rather
-- than an advisory lock, so it is written once for both engines). `rates` counts the series'
-- rates.

CREATE TABLE trade_forex_series (
    org_id UUID NOT NULL,
    currency TEXT NOT NULL,
    rates BIGINT NOT NULL,
    PRIMARY KEY (org_id, currency)
);

INSERT INTO trade_forex_series (org_id, currency, rates)
SELECT org_id, currency, COUNT(*) FROM trade_forex_rates GROUP BY org_id, currency;
