-- Entering a tenant in one statement (see store::enter_tenant).
--
-- The API's tenant connections run as the role sluice_tenant for their whole
-- life, so row-level security applies to every statement they send. The
-- credential re-check that starts each request must see the key's row before
-- sluice.org_id names its organization, so it runs here, as the owner of the
-- tables (SECURITY DEFINER: row-level security does not apply to the owner),
-- and filters on the organization explicitly. It then sets sluice.org_id for
-- the session: to the organization when the credential is live, to '' (which
-- no row matches) when not. Every use of a tenant connection starts with this
-- function, so a value left from an earlier request is always overwritten
-- before a tenant query runs.
--
-- Relations are schema-qualified and no SET clause is attached (a SET clause
-- would make PostgreSQL restore settings at exit): the function reads no
-- object through the caller's search_path.
CREATE FUNCTION sluice_enter_tenant(p_org text, p_api_key text, p_user text, p_role text, p_pool text)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    live boolean;
BEGIN
    IF p_api_key IS NOT NULL THEN
        SELECT EXISTS (
            SELECT 1 FROM public.api_keys k
            LEFT JOIN public.users u ON u.id = k.user_id
            LEFT JOIN public.service_accounts s ON s.id = k.service_account_id
            WHERE k.id = p_api_key AND k.org_id = p_org AND k.revoked_at IS NULL
              AND (k.expires_at IS NULL OR k.expires_at > now())
              -- The key's role must be one its owner could still grant it
              -- (service::auth::may_grant; store::key_within_owner_role).
              AND (k.user_id IS NULL OR (u.id IS NOT NULL AND u.deleted_at IS NULL
                   AND (u.role = 'org_admin' OR k.role = u.role OR k.role = 'viewer')))
              AND (k.service_account_id IS NULL OR (s.id IS NOT NULL AND s.deleted_at IS NULL))
              AND k.role = p_role AND k.compute_pool_id IS NOT DISTINCT FROM p_pool)
        INTO live;
    ELSE
        SELECT EXISTS (
            SELECT 1 FROM public.users
            WHERE id = p_user AND org_id = p_org AND deleted_at IS NULL AND role = p_role)
        INTO live;
    END IF;
    PERFORM pg_catalog.set_config('sluice.org_id', CASE WHEN live THEN p_org ELSE '' END, false);
    RETURN live;
END
$$;

REVOKE ALL ON FUNCTION sluice_enter_tenant(text, text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sluice_enter_tenant(text, text, text, text, text) TO sluice_tenant;
