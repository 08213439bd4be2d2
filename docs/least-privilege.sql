-- Least privilege for outboxd (docs/security.md). Run it as the owner of the
-- outbox schema (the role that ran `outboxd migrate up`), then start
-- outboxd as outboxd_sidecar with AUTO_MIGRATE=false, and let the app
-- connect as outboxd_producer (or grant the producer rights to the app's
-- own role). Change the names and passwords; the test suite runs this file
-- as it is, with the names replaced.

-- The sidecar: reads events, numbers them, deletes expired ones. No DDL,
-- no INSERT, no superuser.
CREATE ROLE outboxd_sidecar LOGIN PASSWORD 'change-me';
GRANT USAGE ON SCHEMA outbox TO outboxd_sidecar;
GRANT SELECT, DELETE ON outbox.events TO outboxd_sidecar;
GRANT UPDATE (seq, delivered_at) ON outbox.events TO outboxd_sidecar;
GRANT SELECT, UPDATE (last_seq, epoch) ON outbox.relay_state TO outboxd_sidecar;
GRANT SELECT, DELETE ON outbox.revocations TO outboxd_sidecar;
GRANT EXECUTE ON FUNCTION outbox.head(), outbox.epoch() TO outboxd_sidecar;
-- Only for RELAY_WAKEUP=idle or notify (outboxd creates the producer trigger):
-- GRANT TRIGGER ON outbox.events TO outboxd_sidecar;

-- The producers: EXECUTE on the producer functions, nothing on the tables.
-- The functions run with their owner's rights (SECURITY DEFINER, pinned
-- search_path) and refuse seq and delivered_at.
CREATE ROLE outboxd_producer LOGIN PASSWORD 'change-me';
GRANT USAGE ON SCHEMA outbox TO outboxd_producer;
GRANT EXECUTE ON FUNCTION outbox.emit(text, jsonb, text[], text[], text),
                          outbox.emit_batch(text[], jsonb[], jsonb[], jsonb[], text[]),
                          outbox.disconnect(text[], text),
                          outbox.head(), outbox.epoch()
  TO outboxd_producer;
