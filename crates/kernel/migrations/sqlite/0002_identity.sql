-- Identity and access: organizations (tenants), business partners, users, sessions,
-- one-time tokens, invitations, API keys, brute-force counters, two-factor material,
-- revocation events (replicated to every node) and security events.

CREATE TABLE organizations (
    id BLOB PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    time_zone TEXT NOT NULL,
    locale TEXT NOT NULL,
    default_currency TEXT NOT NULL,
    require_approval INTEGER NOT NULL,
    require_admin_2fa INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version INTEGER NOT NULL
);

CREATE TABLE partners (
    id BLOB PRIMARY KEY NOT NULL,
    org_id BLOB NOT NULL REFERENCES organizations(id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version INTEGER NOT NULL
);
CREATE INDEX partners_org_created ON partners (org_id, created_at);

CREATE TABLE users (
    id BLOB PRIMARY KEY NOT NULL,
    org_id BLOB NOT NULL REFERENCES organizations(id),
    email TEXT NOT NULL,
    name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    status TEXT NOT NULL,
    partner_id BLOB REFERENCES partners(id),
    email_verified_at TEXT,
    totp_secret TEXT,
    totp_enabled INTEGER NOT NULL,
    totp_last_step INTEGER,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version INTEGER NOT NULL
);
CREATE UNIQUE INDEX users_email ON users (email);
CREATE INDEX users_org_created ON users (org_id, created_at);

CREATE TABLE sessions (
    id BLOB PRIMARY KEY NOT NULL,
    org_id BLOB NOT NULL REFERENCES organizations(id),
    user_id BLOB NOT NULL REFERENCES users(id),
    refresh_hash TEXT NOT NULL,
    previous_refresh_hash TEXT,
    rotated_at TEXT,
    ip TEXT,
    user_agent TEXT,
    created_at TEXT NOT NULL,
    last_used_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    absolute_expires_at TEXT NOT NULL,
    revoked_at TEXT,
    revoked_reason TEXT
);
CREATE UNIQUE INDEX sessions_refresh_hash ON sessions (refresh_hash);
CREATE INDEX sessions_user ON sessions (user_id, created_at);

-- Every refresh token a session has rotated away from, to recognise a replay.
CREATE TABLE refresh_history (
    hash TEXT PRIMARY KEY NOT NULL,
    session_id BLOB NOT NULL REFERENCES sessions(id),
    created_at TEXT NOT NULL
);
CREATE INDEX refresh_history_session ON refresh_history (session_id);

CREATE TABLE revocation_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    subject BLOB NOT NULL,
    not_before TEXT,
    until TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX revocation_events_created ON revocation_events (created_at);

CREATE TABLE email_tokens (
    id BLOB PRIMARY KEY NOT NULL,
    user_id BLOB NOT NULL REFERENCES users(id),
    purpose TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT,
    created_at TEXT NOT NULL
);
CREATE UNIQUE INDEX email_tokens_hash ON email_tokens (token_hash);

CREATE TABLE invitations (
    id BLOB PRIMARY KEY NOT NULL,
    org_id BLOB NOT NULL REFERENCES organizations(id),
    email TEXT NOT NULL,
    role TEXT NOT NULL,
    partner_id BLOB REFERENCES partners(id),
    token_hash TEXT NOT NULL,
    invited_by BLOB NOT NULL REFERENCES users(id),
    expires_at TEXT NOT NULL,
    accepted_at TEXT,
    revoked_at TEXT,
    created_at TEXT NOT NULL
);
CREATE UNIQUE INDEX invitations_token ON invitations (token_hash);
CREATE INDEX invitations_org_created ON invitations (org_id, created_at);

CREATE TABLE api_keys (
    id BLOB PRIMARY KEY NOT NULL,
    org_id BLOB NOT NULL REFERENCES organizations(id),
    created_by BLOB NOT NULL REFERENCES users(id),
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL,
    permissions TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_used_at TEXT,
    revoked_at TEXT
);
CREATE UNIQUE INDEX api_keys_hash ON api_keys (key_hash);
CREATE INDEX api_keys_org_created ON api_keys (org_id, created_at);

-- Brute-force counters: `subject` is `account:<hash of email>` or `ip:<address>`.
CREATE TABLE login_failures (
    subject TEXT PRIMARY KEY NOT NULL,
    failures INTEGER NOT NULL,
    window_started_at TEXT NOT NULL,
    locked_until TEXT
);

CREATE TABLE mfa_challenges (
    id BLOB PRIMARY KEY NOT NULL,
    user_id BLOB NOT NULL REFERENCES users(id),
    token_hash TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT,
    ip TEXT,
    user_agent TEXT,
    created_at TEXT NOT NULL
);
CREATE UNIQUE INDEX mfa_challenges_hash ON mfa_challenges (token_hash);

CREATE TABLE recovery_codes (
    id BLOB PRIMARY KEY NOT NULL,
    user_id BLOB NOT NULL REFERENCES users(id),
    code_hash TEXT NOT NULL,
    used_at TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX recovery_codes_user ON recovery_codes (user_id);

CREATE TABLE security_events (
    id BLOB PRIMARY KEY NOT NULL,
    org_id BLOB,
    user_id BLOB,
    kind TEXT NOT NULL,
    ip TEXT,
    detail TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX security_events_org_created ON security_events (org_id, created_at);

-- One row once the first organization and super admin exist: concurrent first-run calls
-- collide on the primary key, so setup happens exactly once.
CREATE TABLE platform_setup (
    singleton INTEGER PRIMARY KEY NOT NULL,
    done_at TEXT NOT NULL
);
