-- Leader epochs of the reconciler (DESIGN §9): the holder of the advisory lock
-- `lock_key` increments `epoch` on its lock session when it is elected, and
-- every write of the reconciler runs in a transaction whose first statement
-- share-locks this row and checks that the epoch is still the writer's. A
-- deposed leader (a GC pause, a partition that cost it its session) therefore
-- cannot write after a successor was elected: the successor's increment waits
-- for the deposed leader's in-flight writes to commit, and every later one sees
-- the new epoch and is refused. Not tenant data: no row-level security, no grant
-- to sluice_tenant.
CREATE TABLE reconciler_leader (
    lock_key    bigint PRIMARY KEY,
    epoch       bigint NOT NULL CHECK (epoch >= 1),
    -- Who was elected (`host:pid`), for operators.
    holder      text NOT NULL,
    elected_at  timestamptz NOT NULL DEFAULT now(),
    -- Leadership re-checks of this term (one before every pass) and the last one:
    -- `passes >= 2` means the term has completed a pass; `checked_at` shows it lives.
    passes      bigint NOT NULL DEFAULT 0,
    checked_at  timestamptz
);

-- Who wrote it: the epoch of the term whose fenced transaction wrote the row
-- (the reconciler sets `sluice.leader_epoch` for the transaction); NULL for rows
-- written before this migration or outside a term.
ALTER TABLE application_status
    ADD COLUMN leader_epoch bigint
    DEFAULT NULLIF(current_setting('sluice.leader_epoch', true), '')::bigint;
ALTER TABLE events
    ADD COLUMN leader_epoch bigint
    DEFAULT NULLIF(current_setting('sluice.leader_epoch', true), '')::bigint;
ALTER TABLE runs
    ADD COLUMN leader_epoch bigint
    DEFAULT NULLIF(current_setting('sluice.leader_epoch', true), '')::bigint;
