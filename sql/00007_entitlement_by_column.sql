-- Cheaper entitlement indexes for the sequencer, which enters every row it
-- numbers into them (00005). Measured at 2,500 events/s on the project's
-- 2-core machine: with 00005's indexes a sequencer batch took 6.0 ms, 4.3–
-- 4.6 ms without them; in SQL, 00005's GIN index cost ~17 µs a row, of which
-- ~4.5 µs is evaluating outbox.target_keys (an SQL function with two
-- subqueries, run for every row) and the rest a GIN insert that every
-- broadcast paid for an empty key list (BENCHMARKS.md).
--
-- Now every sequenced row enters exactly one kind of entitlement index:
--
--   * events_broadcast_seq_idx (00005, unchanged): the seqs of broadcasts;
--   * events_target_users_idx / events_target_roles_idx: GIN indexes of the
--     target columns themselves (no function), each partial on its column
--     being set, so a broadcast enters neither and a row targeted at roles
--     only enters one.
--
-- The replay's skip-ahead (relay.nextEntitledSQL) asks each of them for
-- its first seq. Built CONCURRENTLY, without blocking producers; the old
-- index is dropped after the new ones exist. outbox.target_keys stays, for
-- a replica still running a binary from before this migration (its lookup
-- still works, without an index, until it is replaced).

-- +goose NO TRANSACTION
-- +goose Up
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_target_users_idx ON outbox.events
  USING gin (target_users) WITH (fastupdate = off) WHERE seq IS NOT NULL AND target_users IS NOT NULL;

CREATE INDEX CONCURRENTLY IF NOT EXISTS events_target_roles_idx ON outbox.events
  USING gin (target_roles) WITH (fastupdate = off) WHERE seq IS NOT NULL AND target_roles IS NOT NULL;

DROP INDEX CONCURRENTLY IF EXISTS outbox.events_targets_idx;

-- +goose Down
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_targets_idx ON outbox.events
  USING gin (outbox.target_keys(target_users, target_roles)) WITH (fastupdate = off) WHERE seq IS NOT NULL;

DROP INDEX CONCURRENTLY IF EXISTS outbox.events_target_roles_idx;

DROP INDEX CONCURRENTLY IF EXISTS outbox.events_target_users_idx;
