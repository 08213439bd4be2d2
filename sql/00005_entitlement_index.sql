-- Replay work that follows what a client is entitled to, not the seq
-- distance. A client resuming past 100,000 rows targeted at someone else
-- used to read all of them, 256 at a time. The replay read now asks these
-- indexes for the next seq it may see whenever a range holds none:
--
--   * events_targets_idx: a GIN index of each sequenced row's targets as
--     keys 'u:<user>' and 'r:<role>' (outbox.target_keys);
--   * events_broadcast_seq_idx: the seqs of broadcasts.
--
-- Both are partial on seq IS NOT NULL: a row enters them when the sequencer
-- numbers it, so producers' INSERTs pay nothing for them; the sequencer
-- does (backlog drain 117k → 74k events/s, BENCHMARKS.md). The GIN index
-- has fastupdate off: with a pending list, every lookup scanned the list
-- until autovacuum merged it (6 ms instead of 0.1 ms at 100k rows), for
-- no gain on the sequencer's side. They are built CONCURRENTLY, without
-- blocking producers on a large table.

-- +goose NO TRANSACTION
-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION outbox.target_keys(users text[], roles text[]) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT coalesce(ARRAY(SELECT 'u:' || u FROM unnest(users) u), '{}')
      || coalesce(ARRAY(SELECT 'r:' || r FROM unnest(roles) r), '{}')
$$;
-- +goose StatementEnd

CREATE INDEX CONCURRENTLY IF NOT EXISTS events_targets_idx ON outbox.events
  USING gin (outbox.target_keys(target_users, target_roles)) WITH (fastupdate = off) WHERE seq IS NOT NULL;

CREATE INDEX CONCURRENTLY IF NOT EXISTS events_broadcast_seq_idx ON outbox.events (seq)
  WHERE seq IS NOT NULL AND target_users IS NULL AND target_roles IS NULL;

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS outbox.events_broadcast_seq_idx;
DROP INDEX CONCURRENTLY IF EXISTS outbox.events_targets_idx;
DROP FUNCTION IF EXISTS outbox.target_keys(text[], text[]);
