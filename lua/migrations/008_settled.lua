-- The planner's settled set (core/settled_store.c): the 16-byte digests of
-- the account inputs for which the rules last returned no action, so that a
-- restarted operator or a new leader does not plan every account again to
-- learn that nothing is to be done. One row; digests only (no account id,
-- no credential), under a tag of the operator version, rules version, image,
-- namespace and accounts table they were made with. Only the leader writes
-- it: after a full pass that changed the set (at most once a minute) and
-- when it stops. Deleting the row is always safe: the next start plans
-- every account once, as before this table existed.
return {
  id = "008_settled",
  description = "settled: the planner's settled set, so a restart does not plan every account again",
  up = function(ctx)
    return ([[
CREATE TABLE IF NOT EXISTS %s.settled (
    id       integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    tag      text NOT NULL,
    digests  bytea NOT NULL,
    saved_at timestamptz NOT NULL DEFAULT now()
);
]]):format(ctx.schema)
  end,
}
