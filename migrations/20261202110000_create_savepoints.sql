-- Savepoint backups (DESIGN.md §8, issue 8): savepoints, their schedules with
-- retention, and exports.
--
-- Neither savepoints nor schedules reference applications: a savepoint's files
-- must still be disposed of (and its bytes billed until then) after its
-- application is deleted, and the schedule carries the dispose_on_delete policy
-- that decides it. The savepoint workers run on the owner's connections, as the
-- reconciler does; tenant requests see these tables through row-level security.

CREATE TABLE savepoints (
    id                   text PRIMARY KEY CHECK (id LIKE 'sp\_%'),
    org_id               text NOT NULL REFERENCES organizations (id),
    application_id       text NOT NULL,
    origin               text NOT NULL
                         CHECK (origin IN ('manual', 'scheduled', 'on_stop', 'pre_upgrade', 'imported')),
    status               text NOT NULL
                         CHECK (status IN ('PENDING', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'DELETING', 'DELETED')),
    label                text CHECK (length(label) BETWEEN 1 AND 200),
    pinned               boolean NOT NULL DEFAULT false,
    -- URI of the savepoint's directory: {storage root}/{org}/{app}/savepoints/{id}.
    location             text,
    source_uri           text,
    size_bytes           bigint CHECK (size_bytes >= 0),
    application_version  bigint,
    -- The schedule's due time (origin 'scheduled'); unique per application below.
    scheduled_for        timestamptz,
    error_code           text,
    error_message        text,
    -- The JobManager's trigger of an IN_PROGRESS savepoint, so that another replica
    -- can resume polling it after this one died.
    job_id               text,
    trigger_id           text,
    -- Work queue: a worker claims a row by moving next_attempt_at past its lease
    -- (FOR UPDATE SKIP LOCKED), and a failed attempt by its backoff.
    attempts             integer NOT NULL DEFAULT 0,
    next_attempt_at      timestamptz NOT NULL DEFAULT now(),
    version              bigint NOT NULL DEFAULT 1,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    completed_at         timestamptz,
    deleted_at           timestamptz
);
CREATE INDEX savepoints_app_idx ON savepoints (application_id, id);
CREATE INDEX savepoints_org_idx ON savepoints (org_id, id);
CREATE INDEX savepoints_work_idx ON savepoints (next_attempt_at)
    WHERE status IN ('PENDING', 'IN_PROGRESS', 'DELETING');
-- One savepoint per due time of a schedule, whatever the number of schedulers.
CREATE UNIQUE INDEX savepoints_scheduled_key ON savepoints (application_id, scheduled_for)
    WHERE origin = 'scheduled';

CREATE TABLE savepoint_schedules (
    application_id     text PRIMARY KEY CHECK (application_id LIKE 'app\_%'),
    org_id             text NOT NULL REFERENCES organizations (id),
    cron               text,
    timezone           text,
    interval_s         bigint CHECK (interval_s >= 1),
    max_count          integer CHECK (max_count BETWEEN 1 AND 1000),
    max_age_s          bigint CHECK (max_age_s >= 1),
    dispose_on_delete  boolean NOT NULL DEFAULT true,
    enabled            boolean NOT NULL,
    -- The next due time; NULL while disabled.
    next_run_at        timestamptz,
    last_run_at        timestamptz,
    last_outcome       text,
    version            bigint NOT NULL DEFAULT 1,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((cron IS NULL) <> (interval_s IS NULL))
);
CREATE INDEX savepoint_schedules_due_idx ON savepoint_schedules (next_run_at) WHERE enabled;

-- An export in flight: the operation it reports to and where it copies.
CREATE TABLE savepoint_exports (
    operation_id     text PRIMARY KEY CHECK (operation_id LIKE 'op\_%'),
    org_id           text NOT NULL REFERENCES organizations (id),
    savepoint_id     text NOT NULL REFERENCES savepoints (id),
    target_uri       text NOT NULL,
    done             boolean NOT NULL DEFAULT false,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX savepoint_exports_work_idx ON savepoint_exports (next_attempt_at) WHERE NOT done;

ALTER TABLE operations DROP CONSTRAINT operations_kind_check;
ALTER TABLE operations ADD CONSTRAINT operations_kind_check
    CHECK (kind IN ('start', 'stop', 'rollback', 'update', 'delete', 'export_savepoint'));

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['savepoints', 'savepoint_schedules', 'savepoint_exports']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO sluice_tenant', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (org_id = current_setting(''sluice.org_id'', true)) WITH CHECK (org_id = current_setting(''sluice.org_id'', true))', t);
    END LOOP;
END
$$;
