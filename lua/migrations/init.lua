-- The ordered list of migrations `sync-airbnb-operator migrate up` applies.
-- Each id names a file <id>.lua in this directory that returns
--   { id = "<id>", description = "...", up = function(ctx) return "SQL" end,
--     accounts_table = nil | "required" | "create" }
-- accounts_table: "required" for a migration that needs the app's accounts
-- table (a trigger on it), "create" for 003, which creates it only with
-- MIGRATE_CREATE_ACCOUNTS_TABLE. Such a migration waits, and every one after
-- it, until sync-airbnb's own migrations created the table.
-- ctx = { schema = "sync_airbnb_operator", accounts_schema = "airbnb",
--         accounts_schema_quoted = '"airbnb"', accounts_table = "accounts",
--         accounts_qualified = '"airbnb"."accounts"' }  (identifiers validated [a-z_][a-z0-9_]*).
--
-- Append only: never reorder, rename or edit an applied migration (its
-- checksum is recorded and `migrate up` refuses a changed one); add a new
-- file instead. SQL must be idempotent and must not BEGIN/COMMIT itself: the
-- runner wraps each migration and its history row in one transaction.
return {
  "001_operator_schema",
  "002_audit_log",
  "003_accounts_table",
  "004_accounts_notify",
  "005_credentials_generation",
  "006_rollout",
  "007_worker_status",
  "008_settled",
}
