-- Durable background jobs (crates/kernel/src/jobs). A job is enqueued inside the business
-- transaction that asks for it; workers claim due jobs (FOR UPDATE SKIP LOCKED) under a
-- lease their heartbeat extends.
CREATE TABLE keel_jobs (
    id UUID PRIMARY KEY,
    -- The organization the job works for; NULL for platform jobs.
    org_id UUID,
    queue TEXT NOT NULL,
    job_type TEXT NOT NULL,
    payload JSONB NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL
        CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled')),
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    run_at TIMESTAMPTZ NOT NULL,
    -- The claim: which worker holds the job, under which claim, until when.
    locked_by UUID,
    lease_token UUID,
    lease_expires_at TIMESTAMPTZ,
    last_error TEXT,
    result JSONB,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    started_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ
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
    name TEXT PRIMARY KEY,
    holder UUID,
    acquired_at TIMESTAMPTZ,
    expires_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

-- Each schedule's progress: ticks after last_tick_at (or first_seen_at) are due.
CREATE TABLE keel_schedules (
    name TEXT PRIMARY KEY,
    first_seen_at TIMESTAMPTZ NOT NULL,
    last_tick_at TIMESTAMPTZ
);

-- One row per tick run; unique per (schedule, tick) so that no tick runs twice.
CREATE TABLE keel_schedule_runs (
    id UUID PRIMARY KEY,
    schedule TEXT NOT NULL,
    tick_at TIMESTAMPTZ NOT NULL,
    missed_ticks INTEGER NOT NULL DEFAULT 0,
    enqueued_at TIMESTAMPTZ NOT NULL,
    leader UUID NOT NULL,
    job_id UUID NOT NULL,
    UNIQUE (schedule, tick_at)
);
CREATE INDEX keel_schedule_runs_tick ON keel_schedule_runs (tick_at);
