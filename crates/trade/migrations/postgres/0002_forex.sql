-- Forex rates against INR and the alerts their changes raise, per organization. A rate is
-- stored exactly as an integer number of millionths of a rupee per unit of the currency
-- (`rate_micros`: "83.2512" is 83251200); buy and sell likewise. `effective_at` is when the
-- rate takes effect (UTC); the rate in force at a time is the latest effective at or before
-- it. Every index leads with the organization.

CREATE TABLE trade_forex_rates (
    id UUID PRIMARY KEY NOT NULL,
    org_id UUID NOT NULL,
    currency TEXT NOT NULL,
    rate_micros BIGINT NOT NULL,
    buy_micros BIGINT,
    sell_micros BIGINT,
    effective_at TIMESTAMPTZ NOT NULL,
    created_by TEXT,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX trade_forex_rates_org_currency_effective
    ON trade_forex_rates (org_id, currency, effective_at, id);
CREATE INDEX trade_forex_rates_org_effective ON trade_forex_rates (org_id, effective_at, id);

CREATE TABLE trade_forex_alerts (
    id UUID PRIMARY KEY NOT NULL,
    org_id UUID NOT NULL,
    rate_id UUID NOT NULL REFERENCES trade_forex_rates (id),
    previous_rate_id UUID NOT NULL REFERENCES trade_forex_rates (id),
    currency TEXT NOT NULL,
    previous_micros BIGINT NOT NULL,
    rate_micros BIGINT NOT NULL,
    change_ppm BIGINT NOT NULL,
    severity TEXT NOT NULL,
    anomaly BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX trade_forex_alerts_org_created ON trade_forex_alerts (org_id, created_at, id);
CREATE INDEX trade_forex_alerts_org_currency ON trade_forex_alerts (org_id, currency, created_at, id);
