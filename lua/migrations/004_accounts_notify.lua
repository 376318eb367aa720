-- NOTIFY sync_airbnb_accounts on every change to an accounts row, so the
-- operator reconciles at once instead of at the next periodic poll.
--
-- Payload: the account id. NOTIFY payloads must be shorter than 8000 bytes;
-- for an id that long the payload is '*', which means "something changed,
-- resync everything". A full resync is a superset of a one-account
-- reconcile, so '*' is safe even for an account whose id is literally '*'.
-- An UPDATE that changes account_id notifies both the old and the new id.
--
-- Adds a trigger to the accounts table (its columns and rows stay as they
-- are). Needs PostgreSQL >= 14 (CREATE OR REPLACE TRIGGER) and a role that
-- owns the table or holds TRIGGER on it.
return {
  id = "004_accounts_notify",
  description = "NOTIFY sync_airbnb_accounts with the account id on insert/update/delete",
  accounts_table = "required",
  up = function(ctx)
    return ([[
CREATE OR REPLACE FUNCTION %s.notify_account_change() RETURNS trigger
LANGUAGE plpgsql AS $sao$
DECLARE
    ids text[];
    id  text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        ids := ARRAY[OLD.account_id::text];
    ELSIF TG_OP = 'UPDATE' AND OLD.account_id IS DISTINCT FROM NEW.account_id THEN
        ids := ARRAY[OLD.account_id::text, NEW.account_id::text];
    ELSE
        ids := ARRAY[NEW.account_id::text];
    END IF;
    FOREACH id IN ARRAY ids LOOP
        IF octet_length(id) < 8000 THEN
            PERFORM pg_notify('sync_airbnb_accounts', id);
        ELSE
            PERFORM pg_notify('sync_airbnb_accounts', '*');
        END IF;
    END LOOP;
    RETURN NULL;
END
$sao$;

CREATE OR REPLACE TRIGGER sync_airbnb_operator_notify
    AFTER INSERT OR UPDATE OR DELETE ON %s
    FOR EACH ROW EXECUTE FUNCTION %s.notify_account_change();
]]):format(ctx.schema, ctx.accounts_qualified, ctx.schema)
  end,
}
