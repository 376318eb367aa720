-- The accounts table, ONLY when it does not exist yet (a database where
-- sync-airbnb has not run its own migrations). An existing table, with the
-- current or the older column set (x_airbnb_client_trace_id), is adopted
-- untouched: the DO block does not even issue CREATE ... IF NOT EXISTS, which
-- would need CREATE privileges the operator's role may not have there.
-- Columns as sync-airbnb creates them (DESIGN.md §2).
return {
  id = "003_accounts_table",
  description = "the accounts table, created only if missing",
  accounts_table = "create",
  up = function(ctx)
    return ([[
DO $sao$
BEGIN
    IF to_regclass('%s') IS NULL THEN
        CREATE SCHEMA IF NOT EXISTS %s;
        CREATE TABLE %s (
            account_id       varchar PRIMARY KEY,
            customer_id      uuid,
            airbnb_cookie    text NOT NULL,
            x_client_version varchar NOT NULL,
            user_agent       text NOT NULL,
            is_active        boolean NOT NULL DEFAULT true,
            last_sync_at     timestamptz,
            created_at       timestamptz NOT NULL DEFAULT now(),
            updated_at       timestamptz NOT NULL DEFAULT now(),
            deleted_at       timestamptz
        );
    END IF;
END
$sao$;
]]):format(ctx.accounts_qualified, ctx.accounts_schema_quoted, ctx.accounts_qualified)
  end,
}
