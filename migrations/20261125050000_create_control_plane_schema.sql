-- The control-plane schema on top of organizations: identity, compute pools,
-- applications, operations, idempotency keys, the audit log, signing keys.
--
-- Every tenant table carries org_id, and every query of the API filters on it.
-- Row-level security is the second wall: a tenant transaction switches to the
-- role sluice_tenant and sets sluice.org_id (see store::tenant_tx), and the
-- policies below then hide every row of another organization even from a
-- query that forgot its filter.

DO $$
BEGIN
    CREATE ROLE sluice_tenant NOLOGIN;
EXCEPTION
    -- Roles are cluster-wide: another database of this cluster (or a migration
    -- running concurrently in one) may have created it already.
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
GRANT sluice_tenant TO CURRENT_USER;
GRANT USAGE ON SCHEMA public TO sluice_tenant;

CREATE TABLE users (
    id             text PRIMARY KEY CHECK (id LIKE 'usr\_%'),
    org_id         text NOT NULL REFERENCES organizations (id),
    -- Login is by email alone, so it is unique across organizations.
    email          text NOT NULL CONSTRAINT users_email_key UNIQUE,
    name           text NOT NULL,
    role           text NOT NULL CHECK (role IN ('org_admin', 'developer', 'viewer', 'billing_admin')),
    password_hash  text NOT NULL,
    version        bigint NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    -- Deleted users keep their row (audit events name them) but cannot log in,
    -- and their tokens stop working at once.
    deleted_at     timestamptz
);
CREATE INDEX users_org_idx ON users (org_id, id);

CREATE TABLE service_accounts (
    id           text PRIMARY KEY CHECK (id LIKE 'sa\_%'),
    org_id       text NOT NULL REFERENCES organizations (id),
    name         text NOT NULL,
    description  text NOT NULL DEFAULT '',
    role         text NOT NULL CHECK (role IN ('org_admin', 'developer', 'viewer', 'billing_admin')),
    version      bigint NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz
);
CREATE UNIQUE INDEX service_accounts_name_key ON service_accounts (org_id, name) WHERE deleted_at IS NULL;

CREATE TABLE compute_pools (
    id          text PRIMARY KEY CHECK (id LIKE 'pool\_%'),
    org_id      text NOT NULL REFERENCES organizations (id),
    name        text NOT NULL,
    region      text NOT NULL,
    max_kpu     integer NOT NULL CHECK (max_kpu BETWEEN 1 AND 10000),
    admission   text NOT NULL CHECK (admission IN ('reject', 'queue')),
    version     bigint NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT compute_pools_name_key UNIQUE (org_id, name)
);

-- Observed usage of a pool, written by the reconciler only.
CREATE TABLE compute_pool_status (
    pool_id               text PRIMARY KEY REFERENCES compute_pools (id) ON DELETE CASCADE,
    org_id                text NOT NULL REFERENCES organizations (id),
    current_kpu_milli     bigint NOT NULL DEFAULT 0 CHECK (current_kpu_milli >= 0),
    pending_applications  integer NOT NULL DEFAULT 0 CHECK (pending_applications >= 0),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id                  text PRIMARY KEY CHECK (id LIKE 'key\_%'),
    org_id              text NOT NULL REFERENCES organizations (id),
    name                text NOT NULL,
    user_id             text REFERENCES users (id),
    service_account_id  text REFERENCES service_accounts (id),
    role                text NOT NULL CHECK (role IN ('org_admin', 'developer', 'viewer', 'billing_admin')),
    compute_pool_id     text REFERENCES compute_pools (id) ON DELETE CASCADE,
    -- SHA-256 of the secret: the secret is 256 random bits, so a slow hash adds nothing.
    secret_sha256       bytea NOT NULL,
    expires_at          timestamptz,
    revoked_at          timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    CHECK ((user_id IS NULL) <> (service_account_id IS NULL))
);
CREATE INDEX api_keys_org_idx ON api_keys (org_id, id);

CREATE TABLE applications (
    id          text PRIMARY KEY CHECK (id LIKE 'app\_%'),
    org_id      text NOT NULL REFERENCES organizations (id),
    -- RESTRICT: a pool with applications cannot go (409), even under a race.
    pool_id     text NOT NULL REFERENCES compute_pools (id) ON DELETE RESTRICT,
    name        text NOT NULL,
    -- The current spec (a copy of the spec of application_versions(id, version)).
    spec        jsonb NOT NULL,
    version     bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT applications_name_key UNIQUE (org_id, name)
);
CREATE INDEX applications_pool_idx ON applications (pool_id);

-- Immutable snapshots: inserted once, never updated.
CREATE TABLE application_versions (
    application_id  text NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    version         bigint NOT NULL CHECK (version >= 1),
    org_id          text NOT NULL REFERENCES organizations (id),
    spec            jsonb NOT NULL,
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (application_id, version)
);

-- Observed state, written by the reconciler only; no row reads as STOPPED.
CREATE TABLE application_status (
    application_id      text PRIMARY KEY REFERENCES applications (id) ON DELETE CASCADE,
    org_id              text NOT NULL REFERENCES organizations (id),
    phase               text NOT NULL,
    reason              text,
    message             text,
    observed_version    bigint,
    current_kpu_milli   bigint NOT NULL DEFAULT 0,
    run_id              text,
    generation          bigint NOT NULL DEFAULT 0,
    last_checkpoint     jsonb,
    started_at          timestamptz,
    queue_position      integer,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE operations (
    id              text PRIMARY KEY CHECK (id LIKE 'op\_%'),
    org_id          text NOT NULL REFERENCES organizations (id),
    -- No foreign key: the operation of a delete outlives its application.
    application_id  text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('start', 'stop', 'rollback', 'update', 'delete')),
    target_version  bigint NOT NULL,
    state           text NOT NULL CHECK (state IN ('IN_PROGRESS', 'SUCCEEDED', 'FAILED')),
    error           jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX operations_app_idx ON operations (application_id, id);

-- A POST with an Idempotency-Key: the request's fingerprint and, once it
-- finished, the response that a retry gets back.
CREATE TABLE idempotency_keys (
    org_id           text NOT NULL REFERENCES organizations (id),
    principal_id     text NOT NULL,
    key              text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_sha256   bytea NOT NULL,
    response_status  smallint,
    response_headers jsonb,
    response_body    bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, principal_id, key)
);

CREATE TABLE audit_events (
    id             text PRIMARY KEY CHECK (id LIKE 'aud\_%'),
    org_id         text NOT NULL REFERENCES organizations (id),
    actor          text NOT NULL,
    api_key_id     text,
    action         text NOT NULL,
    resource_type  text NOT NULL,
    resource_id    text NOT NULL,
    request_id     text,
    details        jsonb NOT NULL DEFAULT '{}',
    at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_events_org_idx ON audit_events (org_id, id);

-- Signing keys of the control plane's JWTs. Not tenant data.
CREATE TABLE signing_keys (
    kid          text PRIMARY KEY,
    -- PKCS#8 Ed25519 key pair, in the clear like the database password in the
    -- server's configuration: whoever reads this table can already read every tenant.
    private_der  bytea NOT NULL,
    public_raw   bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    retired_at   timestamptz
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['organizations', 'users', 'service_accounts', 'compute_pools',
        'compute_pool_status', 'api_keys', 'applications', 'application_versions',
        'application_status', 'operations', 'idempotency_keys', 'audit_events']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO sluice_tenant', t);
        IF t = 'organizations' THEN
            EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (id = current_setting(''sluice.org_id'', true))', t);
        ELSE
            EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (org_id = current_setting(''sluice.org_id'', true)) WITH CHECK (org_id = current_setting(''sluice.org_id'', true))', t);
        END IF;
    END LOOP;
END
$$;
