-- Realtime messages and notifications.
--
-- Realtime: every published message is kept for a retention window so a client that
-- reconnects with its last message id gets what it missed. Messages are numbered per
-- organization without gaps (`realtime_sequences` is the counter; taking a number locks the
-- organization's row until commit, so numbers commit in order). Pub/sub between nodes only
-- signals; the table is the truth. Tickets let browsers open a WebSocket without headers.
--
-- Notifications: the in-app notification center, the delivery status of each email/SMS,
-- per-user preferences per notification type and channel, and the user's SMS number
-- (encrypted at rest).

CREATE TABLE realtime_sequences (
    org_id UUID PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE realtime_messages (
    org_id UUID NOT NULL,
    seq BIGINT NOT NULL,
    channel TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    source_id UUID,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (org_id, seq)
);
CREATE INDEX realtime_messages_channel ON realtime_messages (org_id, channel, seq);
CREATE INDEX realtime_messages_created ON realtime_messages (org_id, created_at);
CREATE UNIQUE INDEX realtime_messages_source ON realtime_messages (org_id, source_id, channel);

CREATE TABLE realtime_tickets (
    org_id UUID NOT NULL,
    token_hash TEXT NOT NULL,
    user_id UUID NOT NULL,
    partner_id UUID,
    permissions TEXT NOT NULL,
    session_id UUID,
    token_id UUID,
    token_expires_at BIGINT,
    api_key_id UUID,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (org_id, token_hash)
);
CREATE INDEX realtime_tickets_expires ON realtime_tickets (org_id, expires_at);

CREATE TABLE notifications (
    id UUID NOT NULL,
    org_id UUID NOT NULL,
    user_id UUID NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    html TEXT,
    data TEXT NOT NULL,
    in_app BOOLEAN NOT NULL,
    read_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (org_id, id)
);
CREATE INDEX notifications_user ON notifications (org_id, user_id, created_at);
CREATE INDEX notifications_user_unread ON notifications (org_id, user_id, read_at);

CREATE TABLE notification_deliveries (
    org_id UUID NOT NULL,
    notification_id UUID NOT NULL,
    channel TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    detail TEXT,
    job_id UUID,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (org_id, notification_id, channel)
);

CREATE TABLE notification_preferences (
    org_id UUID NOT NULL,
    user_id UUID NOT NULL,
    kind TEXT NOT NULL,
    channel TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (org_id, user_id, kind, channel)
);

CREATE TABLE notification_contacts (
    org_id UUID NOT NULL,
    user_id UUID NOT NULL,
    sms_number TEXT,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (org_id, user_id)
);
