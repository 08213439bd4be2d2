-- The history's identity. A seq only means something within one history:
-- a database that is restored from a backup or recreated starts numbering
-- again, and a client resuming with since=N from the old history would be
-- replayed other events under the same seqs. relay_state.epoch is a random
-- value set once, when the row is created; clients send it back with since=
-- and outboxd answers resync_required (reason "epoch") when it differs.
-- outboxd itself rotates it when it finds the head behind what it had
-- already dispatched (a restore to an earlier point of the same history).

-- +goose Up
ALTER TABLE outbox.relay_state
  ADD COLUMN epoch text NOT NULL DEFAULT replace(gen_random_uuid()::text, '-', '');

-- +goose StatementBegin
CREATE FUNCTION outbox.epoch()
RETURNS text
LANGUAGE sql STABLE
AS $$ SELECT epoch FROM outbox.relay_state $$;
-- +goose StatementEnd

COMMENT ON FUNCTION outbox.epoch() IS 'Identity of this outbox history: hand it to the browser with outbox.head(); it connects with since=head&epoch=epoch.';

-- +goose Down
DROP FUNCTION outbox.epoch();
ALTER TABLE outbox.relay_state DROP COLUMN epoch;
