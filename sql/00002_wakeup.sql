-- Optional wake-up of the sequencer by producers (RELAY_WAKEUP=notify).
-- The function is always there; outboxd creates or drops the statement-level
-- trigger that calls it (relay.SetWakeup), so that producers pay one NOTIFY
-- per INSERT statement only when asked to.

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION outbox.notify_pending() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('outbox_pending', '');
  RETURN NULL;
END $$;
-- +goose StatementEnd

-- +goose Down
DROP TRIGGER IF EXISTS events_notify_pending ON outbox.events;
DROP FUNCTION outbox.notify_pending();
