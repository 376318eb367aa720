-- Worker health for the admin side, which must never touch the cluster
-- (issue 21). One row per account the operator knows: whether a worker is
-- wanted and, when something stands in its way, why (reason); the Deployment,
-- the credentials generation it runs with against the one the account has
-- now, its pod's phase, readiness and restarts, when readiness last changed,
-- the last error (scrubbed, at most 200 bytes), the rules version that
-- rendered it, and when the row changed. Only the leader writes it, in
-- batches, and only rows whose content changed (core/wstatus.c); each batch
-- ends with NOTIFY sync_airbnb_worker_status in the same transaction.
--
-- Keyed by sha256(account_id) like credentials_generation (an id of any
-- length fits the index); a hash index serves lookups by account_id.
-- The admin API's role needs only:
--   GRANT USAGE ON SCHEMA sync_airbnb_operator TO <admin role>;
--   GRANT SELECT ON sync_airbnb_operator.worker_status TO <admin role>;
-- (docs/operations.md, "Worker status for the admin side").
return {
  id = "007_worker_status",
  description = "worker_status: worker health per account, for the admin side",
  up = function(ctx)
    return ([[
CREATE TABLE IF NOT EXISTS %s.worker_status (
    account_key  bytea PRIMARY KEY, -- sha256 of account_id
    account_id   text NOT NULL,
    wanted       boolean NOT NULL,  -- the account is active and not soft-deleted
    reason       text CHECK (reason IN ('inactive', 'soft_deleted', 'no_account', 'paused',
                                        'held', 'rollout', 'failing')),
    deployment   text,
    credentials_generation_applied bigint, -- NULL: not known yet
    credentials_generation_wanted  bigint,
    pod_phase    text,
    ready        boolean NOT NULL,
    restarts     integer NOT NULL,
    ready_changed_at timestamptz,
    last_error   text,
    rules_version text,
    changed_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS worker_status_account_id ON %s.worker_status USING hash (account_id);

COMMENT ON TABLE %s.worker_status IS
    'worker health per account, written by sync-airbnb-operator; NOTIFY sync_airbnb_worker_status after each batch';
]]):format(ctx.schema, ctx.schema, ctx.schema)
  end,
}
