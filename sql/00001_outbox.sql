-- The outbox schema: the events table, the sequencer's state and the
-- functions non-Go producers call. See DESIGN.md "Data model".

-- +goose Up
CREATE SCHEMA outbox;

CREATE TABLE outbox.events (
  id           bigint GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
  topic        text        NOT NULL
               CONSTRAINT events_topic_format_check
               CHECK (topic ~ '^[a-z][a-z0-9_.-]{0,63}$'),
  payload      jsonb       NOT NULL
               CONSTRAINT events_payload_object_check
               CHECK (jsonb_typeof(payload) = 'object')
               CONSTRAINT events_payload_max_256kib_check
               CHECK (octet_length(payload::text) <= 262144),
  target_users text[]
               CONSTRAINT events_target_users_no_null_check
               CHECK (array_position(target_users, NULL) IS NULL),
  target_roles text[]
               CONSTRAINT events_target_roles_no_null_check
               CHECK (array_position(target_roles, NULL) IS NULL),
  traceparent  text
               CONSTRAINT events_traceparent_length_check
               CHECK (octet_length(traceparent) <= 512),
  created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
  seq          bigint UNIQUE,
  delivered_at timestamptz
);

COMMENT ON TABLE outbox.events IS 'Transactional outbox: insert as the LAST statement of the producing transaction; outboxd relays rows in commit order.';
COMMENT ON COLUMN outbox.events.seq IS 'Delivery position assigned by the sequencer; NULL = not yet relayed. Gap-free, follows commit order.';

-- Pending rows: the sequencer scans this small partial index.
CREATE INDEX events_pending_idx ON outbox.events (id) WHERE seq IS NULL;

CREATE TABLE outbox.relay_state (
  singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),
  last_seq  bigint NOT NULL DEFAULT 0
);
INSERT INTO outbox.relay_state DEFAULT VALUES;

-- +goose StatementBegin
CREATE FUNCTION outbox.emit(topic text, payload jsonb, users text[] DEFAULT NULL,
                            roles text[] DEFAULT NULL, traceparent text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql VOLATILE
AS $$
  INSERT INTO outbox.events (topic, payload, target_users, target_roles, traceparent)
  VALUES (emit.topic, emit.payload, emit.users, emit.roles, emit.traceparent)
  RETURNING id
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION outbox.head()
RETURNS bigint
LANGUAGE sql STABLE
AS $$ SELECT last_seq FROM outbox.relay_state $$;
-- +goose StatementEnd

COMMENT ON FUNCTION outbox.emit(text, jsonb, text[], text[], text) IS 'Insert an event; call it as the last statement of the transaction.';
COMMENT ON FUNCTION outbox.head() IS 'Last assigned seq: read it with the app state in one REPEATABLE READ transaction and connect with since=head.';

-- +goose Down
DROP SCHEMA outbox CASCADE;
