-- Billing (DESIGN.md §7, issue 7): price books, budgets and budget alerts.
-- The ledger itself (runs, usage_spans) is written by the reconciler from
-- provisioner evidence; see its migration.
--
-- Money is integer micro-units of the deployment's one currency, usage
-- integer milli-KPU-seconds: no floating point anywhere in billing.

-- Price books, one per region, versioned by effective date. Operator data,
-- not tenant data: tenants may read prices (their usage reports are costed
-- with them), only the owner writes (admin API, `sluice billing price-book`).
CREATE TABLE price_books (
    region                      text NOT NULL CHECK (length(region) BETWEEN 1 AND 100),
    -- Whole seconds, so that the ledger's whole-second arithmetic never splits a second.
    effective_from              timestamptz NOT NULL
                                CHECK (date_trunc('second', effective_from) = effective_from),
    currency                    text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    kpu_hour_micros             bigint NOT NULL CHECK (kpu_hour_micros BETWEEN 0 AND 1000000000000),
    orchestration_share_milli   bigint NOT NULL DEFAULT 250
                                CHECK (orchestration_share_milli BETWEEN 0 AND 1000),
    savepoint_gib_month_micros  bigint NOT NULL CHECK (savepoint_gib_month_micros BETWEEN 0 AND 1000000000000),
    created_by                  text NOT NULL DEFAULT 'migration',
    created_at                  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (region, effective_from)
);
GRANT SELECT ON price_books TO sluice_tenant;

-- The default region's book (config `regions` defaults to ["local"]):
-- 0.11 per KPU-hour, the JobManager's 0.25 KPU, 0.023 per GiB-month of savepoints.
INSERT INTO price_books (region, effective_from, currency, kpu_hour_micros,
                         orchestration_share_milli, savepoint_gib_month_micros)
VALUES ('local', '2020-01-01T00:00:00Z', 'USD', 110000, 250, 23000);

-- One monthly budget per organization.
CREATE TABLE budgets (
    org_id                text PRIMARY KEY REFERENCES organizations (id),
    monthly_limit_micros  bigint NOT NULL CHECK (monthly_limit_micros > 0),
    -- Strictly increasing percentages, 1..=1000 (checked by sluice_billing::Budget).
    thresholds_percent    integer[] NOT NULL,
    hard_stop             boolean NOT NULL DEFAULT false,
    version               bigint NOT NULL DEFAULT 1,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- What the budget pass raised: one row per organization, month, kind and
-- threshold, so an alert is raised (and audited) once whatever the number of
-- passes or replicas that see the threshold crossed.
CREATE TABLE budget_alerts (
    org_id             text NOT NULL REFERENCES organizations (id),
    month              text NOT NULL CHECK (month ~ '^[0-9]{4}-[0-9]{2}$'),
    kind               text NOT NULL CHECK (kind IN ('threshold', 'hard_stop')),
    threshold_percent  integer NOT NULL CHECK (threshold_percent BETWEEN 1 AND 1000),
    spend_micros       bigint NOT NULL,
    limit_micros       bigint NOT NULL,
    raised_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, month, kind, threshold_percent)
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['budgets', 'budget_alerts']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO sluice_tenant', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (org_id = current_setting(''sluice.org_id'', true)) WITH CHECK (org_id = current_setting(''sluice.org_id'', true))', t);
    END LOOP;
END
$$;
