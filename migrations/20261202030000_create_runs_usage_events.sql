-- Applications run: runs (one provisioned cluster lifetime each), the billing
-- ledger of usage spans, application events, and the reconciler's own
-- bookkeeping (admission reservations and the FIFO queue, the stage of a
-- multi-step action, the last savepoint).
--
-- Writers: the API writes admission reservations and queue entries (inside the
-- transaction that locks the pool row, DESIGN §6); everything else here is
-- written by the elected reconciler only. The billing engine reads runs and
-- usage_spans.

-- One cluster lifetime. No foreign key to applications: a run (and what it is
-- billed for) outlives the application.
CREATE TABLE runs (
    id                   text PRIMARY KEY CHECK (id LIKE 'run\_%'),
    org_id               text NOT NULL REFERENCES organizations (id),
    application_id       text NOT NULL,
    pool_id              text NOT NULL,
    region               text NOT NULL,
    generation           bigint NOT NULL CHECK (generation >= 1),
    application_version  bigint NOT NULL,
    kpu_milli            bigint NOT NULL CHECK (kpu_milli > 0),
    created_at           timestamptz NOT NULL DEFAULT now(),
    ended_at             timestamptz,
    end_reason           text,
    -- How the cluster restores (`none`, `latest` or a snapshot URI), so a leader
    -- that takes over re-creates a recorded but unprovisioned cluster as decided.
    restore              text NOT NULL DEFAULT 'none',
    -- Generations are fences in checkpoint storage: one run per generation.
    CONSTRAINT runs_generation_key UNIQUE (application_id, generation)
);
CREATE INDEX runs_org_idx ON runs (org_id, id);
CREATE INDEX runs_open_idx ON runs (application_id) WHERE ended_at IS NULL;

-- The ledger: one row per contiguous span of a run at a fixed size. Opened at
-- the cluster's observed process start, closed at its observed exit: both
-- times come from the provisioner, never from the clock of the reconciler.
CREATE TABLE usage_spans (
    id              bigserial PRIMARY KEY,
    org_id          text NOT NULL REFERENCES organizations (id),
    run_id          text NOT NULL REFERENCES runs (id),
    application_id  text NOT NULL,
    pool_id         text NOT NULL,
    region          text NOT NULL,
    kpu_milli       bigint NOT NULL CHECK (kpu_milli > 0),
    started_at      timestamptz NOT NULL,
    -- NULL while the span is open.
    ended_at        timestamptz,
    -- What closed it: 'stopped', 'deleted', 'updated', 'failed', … (NULL while open).
    closed_by       text,
    CHECK (ended_at IS NULL OR ended_at >= started_at),
    CHECK ((ended_at IS NULL) = (closed_by IS NULL)),
    -- Opening a span is retried after a crash: the same start is the same span.
    CONSTRAINT usage_spans_start_key UNIQUE (run_id, started_at)
);
CREATE UNIQUE INDEX usage_spans_one_open_per_run ON usage_spans (run_id) WHERE ended_at IS NULL;
CREATE INDEX usage_spans_org_idx ON usage_spans (org_id, started_at);

-- What happened to an application, for its owner (GET /v1/applications/{id}/events).
CREATE TABLE events (
    id              text PRIMARY KEY CHECK (id LIKE 'evt\_%'),
    org_id          text NOT NULL REFERENCES organizations (id),
    -- No foreign key: the events of a deleted application stay for the audit trail.
    application_id  text NOT NULL,
    at              timestamptz NOT NULL DEFAULT now(),
    type            text NOT NULL,
    phase           text,
    reason          text,
    message         text
);
CREATE INDEX events_app_idx ON events (application_id, id);

-- Per application: what the reconciler and admission need besides spec and status.
CREATE TABLE application_runtime (
    application_id       text PRIMARY KEY REFERENCES applications (id) ON DELETE CASCADE,
    org_id               text NOT NULL REFERENCES organizations (id),
    pool_id              text NOT NULL,
    -- The job's id in the engine (32 hex digits), stable across runs.
    job_id               text NOT NULL CHECK (job_id ~ '^[0-9a-f]{32}$'),
    -- KPUs admitted against the pool (0 when none); the pool's usage is their sum.
    reserved_kpu_milli   bigint NOT NULL DEFAULT 0 CHECK (reserved_kpu_milli >= 0),
    -- Set while waiting for capacity in a pool with admission 'queue': FIFO order.
    queued_seq           bigint,
    queued_kpu_milli     bigint,
    -- A multi-step action in flight (e.g. a stop-with-savepoint trigger), so a
    -- restarted leader resumes it instead of starting over.
    stage                jsonb,
    -- The newest savepoint taken by a stop or an upgrade, and the generation
    -- that wrote it: 'latest' restores from it unless a newer generation
    -- completed a checkpoint since.
    last_savepoint_uri   text,
    last_savepoint_generation bigint,
    -- Consecutive failed cluster starts (FAILED after too many).
    failures             integer NOT NULL DEFAULT 0,
    -- `:stop` with force: no savepoint.
    stop_force           boolean NOT NULL DEFAULT false,
    -- The restore of the next run when an upgrade decided it (`none` when stateless).
    next_restore         text,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX application_runtime_pool_idx ON application_runtime (pool_id);
CREATE INDEX application_runtime_queue_idx ON application_runtime (pool_id, queued_seq)
    WHERE queued_seq IS NOT NULL;
CREATE SEQUENCE admission_queue_seq;
GRANT USAGE ON SEQUENCE admission_queue_seq TO sluice_tenant;

-- Deletion is asynchronous: the application stays (phase DELETING) until its
-- cluster and storage are gone.
ALTER TABLE applications ADD COLUMN delete_requested_at timestamptz;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['runs', 'usage_spans', 'events', 'application_runtime']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (org_id = current_setting(''sluice.org_id'', true)) WITH CHECK (org_id = current_setting(''sluice.org_id'', true))', t);
    END LOOP;
END
$$;
-- Tenants read their runs, spans and events; they write only admission state
-- (through the API's rules). Spans, runs and events are the reconciler's.
GRANT SELECT ON runs, usage_spans, events TO sluice_tenant;
GRANT SELECT, INSERT, UPDATE ON application_runtime TO sluice_tenant;

