-- A wake-up producers pay only while the sequencer is idle
-- (RELAY_WAKEUP=idle). As with 00002, the function is always there and
-- outboxd creates or drops the statement-level trigger that calls it
-- (relay.SetWakeup).
--
-- The sequencer holds a session-level advisory lock, key (1869968482,
-- 2003919717) — 'outb', 'wake' — while it is busy numbering rows, and
-- lets go of it when a batch finds nothing and it goes to sleep. A
-- producer's INSERT statement tries the lock for its transaction: while
-- the sequencer holds it the try fails at once and nothing is notified
-- (under load, a producer pays a failed lock try, no NOTIFY); while the
-- sequencer sleeps, the first statement gets the lock and notifies
-- outbox_pending, and the lock it now holds until its transaction ends
-- keeps the others of that moment from notifying too. The key is in the
-- two-integer space of pg_advisory_lock: an app's bigint keys never meet
-- it (PostgreSQL keeps the two spaces apart), two-integer ones only if
-- they pick this pair.

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION outbox.notify_pending_if_idle() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF pg_try_advisory_xact_lock(1869968482, 2003919717) THEN
    PERFORM pg_notify('outbox_pending', '');
  END IF;
  RETURN NULL;
END $$;
-- +goose StatementEnd

-- +goose Down
DROP TRIGGER IF EXISTS events_notify_pending_if_idle ON outbox.events;
DROP FUNCTION outbox.notify_pending_if_idle();
