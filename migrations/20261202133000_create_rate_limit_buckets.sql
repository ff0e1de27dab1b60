-- Token buckets of the per-credential rate limit (`limits.requests_per_second`,
-- `limits.burst`), shared by every control-plane process so that a credential gets
-- its rate once, not once per process. A process leases a slice of a bucket with one
-- upsert and spends it in memory (control-plane/src/http/rate_limit.rs), so requests
-- touch this table only when their process's slice is spent. A missing row is a full
-- bucket: rows that have refilled are deleted, and the table is UNLOGGED because
-- after a crash full buckets are the right state anyway. Not tenant data: no
-- row-level security, no grant to sluice_tenant.
CREATE UNLOGGED TABLE rate_limit_buckets (
    -- An API key id, a user or service account id (logins), or `login:<email>`.
    credential   text PRIMARY KEY,
    tokens       double precision NOT NULL,
    refilled_at  timestamptz NOT NULL,
    -- The tokens the last lease took: what the upsert returns to its caller.
    last_grant   integer NOT NULL CHECK (last_grant >= 0)
);
