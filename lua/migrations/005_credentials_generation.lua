-- Who changed an account's credentials, counted in the database: the
-- worker's own cookie rotation must not roll it, anyone else's change must
-- (lua/rules/fingerprint.lua). The worker's sessions carry application_name
-- 'sync-airbnb-worker' (PGAPPNAME in lua/rules/deployment.lua); every
-- INSERT, and every UPDATE that changes airbnb_cookie, x_client_version,
-- user_agent or account_id, made by any other session, adds one to the
-- account's row in sync_airbnb_operator.credentials_generation, in the same
-- transaction. The operator reads it with the accounts (a LEFT JOIN, 0 when
-- there is no row) and the fingerprint hashes it.
--
-- The accounts table's columns and rows stay as they are: the counter is in
-- the operator's schema, keyed by sha256(account_id), and survives a hard
-- delete, so a re-created account never reuses a generation. SECURITY
-- DEFINER: the app's roles write the accounts table, and need no privilege
-- on the operator's schema for the trigger to record their change.
-- Needs the accounts table (accounts_table = "required"): on a fresh install
-- it waits for sync-airbnb's own migrations to create it.
return {
  id = "005_credentials_generation",
  description = "credentials_generation: credential changes made by anyone but the worker",
  accounts_table = "required",
  up = function(ctx)
    return ([[
CREATE TABLE IF NOT EXISTS %s.credentials_generation (
    account_key bytea PRIMARY KEY, -- sha256 of account_id: an id of any length fits the index
    account_id  text NOT NULL,
    generation  bigint NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    changed_by  text
);

COMMENT ON TABLE %s.credentials_generation IS
    'per account: credential changes made by sessions whose application_name is not sync-airbnb-worker';

CREATE OR REPLACE FUNCTION %s.count_credentials_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $sao$
DECLARE
    app text := coalesce(current_setting('application_name', true), '');
BEGIN
    IF app = 'sync-airbnb-worker' THEN
        RETURN NULL; -- the worker's own rotation
    END IF;
    IF TG_OP = 'UPDATE'
       AND NEW.account_id IS NOT DISTINCT FROM OLD.account_id
       AND NEW.airbnb_cookie IS NOT DISTINCT FROM OLD.airbnb_cookie
       AND NEW.x_client_version IS NOT DISTINCT FROM OLD.x_client_version
       AND NEW.user_agent IS NOT DISTINCT FROM OLD.user_agent THEN
        RETURN NULL; -- no credential changed
    END IF;
    INSERT INTO %s.credentials_generation AS g (account_key, account_id, generation, changed_by)
    VALUES (sha256(convert_to(NEW.account_id::text, 'UTF8')), NEW.account_id::text, 1, app)
    ON CONFLICT (account_key) DO UPDATE
        SET generation = g.generation + 1, changed_at = now(), changed_by = EXCLUDED.changed_by;
    RETURN NULL;
END
$sao$;

CREATE OR REPLACE TRIGGER sync_airbnb_operator_credentials
    AFTER INSERT OR UPDATE ON %s
    FOR EACH ROW EXECUTE FUNCTION %s.count_credentials_change();
]]):format(ctx.schema, ctx.schema, ctx.schema, ctx.schema, ctx.accounts_qualified, ctx.schema)
  end,
}
