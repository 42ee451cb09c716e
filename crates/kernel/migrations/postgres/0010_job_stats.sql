-- Queue backlog figures (`GET /api/v1/metrics/jobs`, Prometheus) read unfinished, failed and
-- dead jobs by state and queue without scanning finished ones; retention removes finished
-- jobs by age.
CREATE INDEX keel_jobs_state ON keel_jobs (state, queue, run_at);
CREATE INDEX keel_jobs_finished ON keel_jobs (finished_at) WHERE finished_at IS NOT NULL;
