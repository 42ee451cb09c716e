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
    org_id BLOB PRIMARY KEY NOT NULL,
    last_seq INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE realtime_messages (
    org_id BLOB NOT NULL,
    seq INTEGER NOT NULL,
    channel TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    source_id BLOB,
    created_at TEXT NOT NULL,
    PRIMARY KEY (org_id, seq)
);
CREATE INDEX realtime_messages_channel ON realtime_messages (org_id, channel, seq);
CREATE INDEX realtime_messages_created ON realtime_messages (org_id, created_at);
CREATE UNIQUE INDEX realtime_messages_source ON realtime_messages (org_id, source_id, channel);

CREATE TABLE realtime_tickets (
    org_id BLOB NOT NULL,
    token_hash TEXT NOT NULL,
    user_id BLOB NOT NULL,
    partner_id BLOB,
    permissions TEXT NOT NULL,
    session_id BLOB,
    token_id BLOB,
    token_expires_at INTEGER,
    api_key_id BLOB,
    expires_at TEXT NOT NULL,
    PRIMARY KEY (org_id, token_hash)
);
CREATE INDEX realtime_tickets_expires ON realtime_tickets (org_id, expires_at);

CREATE TABLE notifications (
    id BLOB NOT NULL,
    org_id BLOB NOT NULL,
    user_id BLOB NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    html TEXT,
    data TEXT NOT NULL,
    in_app INTEGER NOT NULL,
    read_at TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (org_id, id)
);
CREATE INDEX notifications_user ON notifications (org_id, user_id, created_at);
CREATE INDEX notifications_user_unread ON notifications (org_id, user_id, read_at);

CREATE TABLE notification_deliveries (
    org_id BLOB NOT NULL,
    notification_id BLOB NOT NULL,
    channel TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    detail TEXT,
    job_id BLOB,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (org_id, notification_id, channel)
);

CREATE TABLE notification_preferences (
    org_id BLOB NOT NULL,
    user_id BLOB NOT NULL,
    kind TEXT NOT NULL,
    channel TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (org_id, user_id, kind, channel)
);

CREATE TABLE notification_contacts (
    org_id BLOB NOT NULL,
    user_id BLOB NOT NULL,
    sms_number TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (org_id, user_id)
);
