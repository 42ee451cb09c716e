-- Durable background jobs (crates/kernel/src/jobs). A job is enqueued inside the business
-- transaction that asks for it; workers claim due jobs under a lease their heartbeat extends.
CREATE TABLE keel_jobs (
    id BLOB PRIMARY KEY NOT NULL,
    -- The organization the job works for; NULL for platform jobs.
    org_id BLOB,
    queue TEXT NOT NULL,
    job_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL
        CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled')),
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    run_at TEXT NOT NULL,
    -- The claim: which worker holds the job, under which claim, until when.
    locked_by BLOB,
    lease_token BLOB,
    lease_expires_at TEXT,
    last_error TEXT,
    result TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
);

-- The claim query: due jobs of one queue, highest priority first, then oldest.
CREATE INDEX keel_jobs_claim ON keel_jobs (queue, state, priority DESC, run_at);
-- The reaper: running jobs whose lease ran out.
CREATE INDEX keel_jobs_lease ON keel_jobs (lease_expires_at) WHERE state = 'running';
-- Listings: an organization's jobs, and all jobs, newest first.
CREATE INDEX keel_jobs_org_created ON keel_jobs (org_id, created_at, id);
CREATE INDEX keel_jobs_created ON keel_jobs (created_at, id);

-- Named leases held by one node at a time (the scheduler's leader).
CREATE TABLE keel_leases (
    name TEXT PRIMARY KEY NOT NULL,
    holder BLOB,
    acquired_at TEXT,
    expires_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- Each schedule's progress: ticks after last_tick_at (or first_seen_at) are due.
CREATE TABLE keel_schedules (
    name TEXT PRIMARY KEY NOT NULL,
    first_seen_at TEXT NOT NULL,
    last_tick_at TEXT
);

-- One row per tick run; unique per (schedule, tick) so that no tick runs twice.
CREATE TABLE keel_schedule_runs (
    id BLOB PRIMARY KEY NOT NULL,
    schedule TEXT NOT NULL,
    tick_at TEXT NOT NULL,
    missed_ticks INTEGER NOT NULL DEFAULT 0,
    enqueued_at TEXT NOT NULL,
    leader BLOB NOT NULL,
    job_id BLOB NOT NULL,
    UNIQUE (schedule, tick_at)
);
CREATE INDEX keel_schedule_runs_tick ON keel_schedule_runs (tick_at);
