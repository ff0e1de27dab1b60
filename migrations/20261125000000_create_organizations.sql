-- Tenants. Every tenant-owned table references this one through org_id.
CREATE TABLE organizations (
    id          text PRIMARY KEY CHECK (id LIKE 'org\_%'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    version     bigint NOT NULL DEFAULT 1
);
