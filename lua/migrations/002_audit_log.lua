-- One row per operator action (DESIGN.md §5.6): create, update, delete,
-- hold, error. Never holds credential values.
return {
  id = "002_audit_log",
  description = "audit_log: one row per create/update/delete/hold/error",
  up = function(ctx)
    return ([[
CREATE TABLE IF NOT EXISTS %s.audit_log (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    action     text NOT NULL,
    account_id text,
    deployment text,
    reason     text,
    actor      text
);

COMMENT ON COLUMN %s.audit_log.action IS
    'create | update | delete | hold | error (and future actions)';

CREATE INDEX IF NOT EXISTS audit_log_account_id_at_idx ON %s.audit_log (account_id, at);
CREATE INDEX IF NOT EXISTS audit_log_at_idx ON %s.audit_log (at);
]]):format(ctx.schema, ctx.schema, ctx.schema, ctx.schema)
  end,
}
