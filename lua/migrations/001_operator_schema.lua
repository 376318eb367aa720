-- The operator's own schema and its migration history. The runner also
-- creates schema_migrations before applying anything (it must record this
-- very migration); this file makes the object part of the declared history.
return {
  id = "001_operator_schema",
  description = "schema sync_airbnb_operator and schema_migrations",
  up = function(ctx)
    return ([[
CREATE SCHEMA IF NOT EXISTS %s;

CREATE TABLE IF NOT EXISTS %s.schema_migrations (
    id         text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
]]):format(ctx.schema, ctx.schema)
  end,
}
