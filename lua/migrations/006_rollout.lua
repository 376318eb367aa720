-- The state of the rules rollout (core/rollout.c, docs/rules.md#rollouts):
-- one row, so that a restarted operator or a new leader resumes a rollout
-- where it stood. from_rules/to_rules hold the rules files (name -> text)
-- the workers not yet reached keep being planned with. No credential is
-- ever stored here: rules files and Deployment names only. The rules are
-- stored as luahost_dir_bundle() makes them: name NUL text NUL, per file.
return {
  id = "006_rollout",
  description = "rollout: the state of the rules rollout in waves (one row)",
  up = function(ctx)
    return ([[
CREATE TABLE IF NOT EXISTS %s.rollout (
    id              integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    phase           text NOT NULL,
    from_version    text,
    from_image      text,
    from_rules      bytea,
    to_version      text NOT NULL,
    to_image        text NOT NULL,
    to_rules        bytea,
    members         jsonb NOT NULL DEFAULT '[]',
    waves           jsonb NOT NULL DEFAULT '[]',
    wave            integer NOT NULL DEFAULT 0,
    reached         integer NOT NULL DEFAULT 0,
    wave_started_at timestamptz,
    healthy_since   timestamptz,
    halt_reason     text,
    request         text,
    started_at      timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

COMMENT ON COLUMN %s.rollout.phase IS
    'complete | progressing | halted | aborted';
COMMENT ON COLUMN %s.rollout.request IS
    'resume | abort, set by a person (sync-airbnb-operator rollout resume|abort)';
]]):format(ctx.schema, ctx.schema, ctx.schema)
  end,
}
