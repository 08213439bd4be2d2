-- Presence in the database (PRESENCE=true): who is online, as rows an app
-- can join with its own tables, consistent with the stream.
--
-- * outbox.presence_replicas: one row per running outboxd, its heartbeat
--   (seen_at, refreshed every PRESENCE_INTERVAL).
-- * outbox.presence_sessions: per replica and user, how many sessions the
--   replica holds and the roles they carry. Written in batches, at most
--   PRESENCE_INTERVAL after a change.
-- * outbox.presence_users: one row per user ever seen online, whether the
--   user is online across replicas, and the roles last announced. It is
--   the per-user lock: a replica changing a user's sessions (or sweeping a
--   dead replica) locks these rows first, in user_id order, so two
--   replicas closing one user's last sessions at once serialise and
--   exactly one of them writes the offline event.
-- * outbox.online_users: the view an app reads, with outbox.head() and
--   outbox.epoch() in one REPEATABLE READ transaction.
--
-- A transition of presence_users.online writes an event of topic
-- `presence` in the same transaction, targeted at PRESENCE_ROLES. The
-- topic is the relay's: outbox.emit and outbox.emit_batch refuse it.
-- A replica whose heartbeat is older than PRESENCE_TTL is swept by a
-- surviving one: its rows deleted and its users' offline events written in
-- one transaction.

-- +goose Up
CREATE TABLE outbox.presence_replicas (
  replica_id text        PRIMARY KEY,
  started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  seen_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE outbox.presence_sessions (
  replica_id text        NOT NULL, -- outbox.presence_replicas; no foreign key: a check per row written (the sweep deletes both)
  user_id    text        NOT NULL,
  roles      text[]      NOT NULL DEFAULT '{}',
  sessions   int         NOT NULL CHECK (sessions > 0),
  since      timestamptz NOT NULL,
  PRIMARY KEY (replica_id, user_id)
);
CREATE INDEX presence_sessions_user_idx ON outbox.presence_sessions (user_id);

CREATE TABLE outbox.presence_users (
  user_id    text        PRIMARY KEY,
  online     bool        NOT NULL DEFAULT false,
  roles      text[]      NOT NULL DEFAULT '{}',
  changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE VIEW outbox.online_users AS
SELECT s.user_id,
       coalesce((SELECT array_agg(DISTINCT r ORDER BY r)
                 FROM outbox.presence_sessions s2 CROSS JOIN LATERAL unnest(s2.roles) AS r
                 WHERE s2.user_id = s.user_id), '{}') AS roles,
       sum(s.sessions)::int AS sessions,
       min(s.since) AS since
FROM outbox.presence_sessions s
GROUP BY s.user_id;

COMMENT ON VIEW outbox.online_users IS 'Who is online (PRESENCE=true), over every replica. Read it with outbox.head() and outbox.epoch() in one REPEATABLE READ transaction, then follow topic presence with since=head.';
COMMENT ON TABLE outbox.presence_sessions IS 'Maintained by outboxd (PRESENCE=true): sessions per replica and user.';
COMMENT ON TABLE outbox.presence_replicas IS 'Maintained by outboxd (PRESENCE=true): running replicas and their heartbeat.';
COMMENT ON TABLE outbox.presence_users IS 'Maintained by outboxd (PRESENCE=true): per-user online state and lock row.';

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox.emit(topic text, payload jsonb, users text[] DEFAULT NULL,
                                       roles text[] DEFAULT NULL, traceparent text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  id bigint;
BEGIN
  IF starts_with(emit.topic, 'outboxd.') OR emit.topic = 'presence' THEN
    RAISE EXCEPTION 'topic % is reserved for outboxd''s own events', emit.topic
      USING ERRCODE = 'check_violation', CONSTRAINT = 'events_topic_reserved';
  END IF;
  INSERT INTO outbox.events (topic, payload, target_users, target_roles, traceparent)
  VALUES (emit.topic, emit.payload, emit.users, emit.roles, emit.traceparent)
  RETURNING events.id INTO id;
  RETURN id;
END $$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox.emit_batch(topics text[], payloads jsonb[], users jsonb[], roles jsonb[], traceparents text[])
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  n int := coalesce(cardinality(emit_batch.topics), 0);
BEGIN
  IF coalesce(cardinality(emit_batch.payloads), 0) <> n THEN
    RAISE EXCEPTION 'outbox.emit_batch: payloads has % elements, topics %', coalesce(cardinality(emit_batch.payloads), 0), n
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF emit_batch.users IS NOT NULL AND cardinality(emit_batch.users) <> n THEN
    RAISE EXCEPTION 'outbox.emit_batch: users has % elements, topics %: give one per event (a JSON null for none), or NULL for none at all', cardinality(emit_batch.users), n
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF emit_batch.roles IS NOT NULL AND cardinality(emit_batch.roles) <> n THEN
    RAISE EXCEPTION 'outbox.emit_batch: roles has % elements, topics %: give one per event (a JSON null for none), or NULL for none at all', cardinality(emit_batch.roles), n
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF emit_batch.traceparents IS NOT NULL AND cardinality(emit_batch.traceparents) <> n THEN
    RAISE EXCEPTION 'outbox.emit_batch: traceparents has % elements, topics %', cardinality(emit_batch.traceparents), n
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF EXISTS (SELECT 1 FROM unnest(emit_batch.topics) t WHERE starts_with(t, 'outboxd.') OR t = 'presence') THEN
    RAISE EXCEPTION 'topics outboxd.* and presence are reserved for outboxd''s own events'
      USING ERRCODE = 'check_violation', CONSTRAINT = 'events_topic_reserved';
  END IF;
  RETURN QUERY
  INSERT INTO outbox.events (topic, payload, target_users, target_roles, traceparent)
  SELECT t, p,
         CASE WHEN u IS NULL OR u = 'null' THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text(u)) END,
         CASE WHEN r IS NULL OR r = 'null' THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text(r)) END,
         tp
  FROM unnest(emit_batch.topics, emit_batch.payloads, emit_batch.users, emit_batch.roles, emit_batch.traceparents)
       WITH ORDINALITY AS x(t, p, u, r, tp, ord)
  ORDER BY ord
  RETURNING events.id;
END $$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox.emit(topic text, payload jsonb, users text[] DEFAULT NULL,
                                       roles text[] DEFAULT NULL, traceparent text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  id bigint;
BEGIN
  IF starts_with(emit.topic, 'outboxd.') THEN
    RAISE EXCEPTION 'topic % is reserved for outboxd''s control rows', emit.topic
      USING ERRCODE = 'check_violation', CONSTRAINT = 'events_topic_reserved';
  END IF;
  INSERT INTO outbox.events (topic, payload, target_users, target_roles, traceparent)
  VALUES (emit.topic, emit.payload, emit.users, emit.roles, emit.traceparent)
  RETURNING events.id INTO id;
  RETURN id;
END $$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox.emit_batch(topics text[], payloads jsonb[], users jsonb[], roles jsonb[], traceparents text[])
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  n int := coalesce(cardinality(emit_batch.topics), 0);
BEGIN
  IF coalesce(cardinality(emit_batch.payloads), 0) <> n THEN
    RAISE EXCEPTION 'outbox.emit_batch: payloads has % elements, topics %', coalesce(cardinality(emit_batch.payloads), 0), n
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF emit_batch.users IS NOT NULL AND cardinality(emit_batch.users) <> n THEN
    RAISE EXCEPTION 'outbox.emit_batch: users has % elements, topics %: give one per event (a JSON null for none), or NULL for none at all', cardinality(emit_batch.users), n
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF emit_batch.roles IS NOT NULL AND cardinality(emit_batch.roles) <> n THEN
    RAISE EXCEPTION 'outbox.emit_batch: roles has % elements, topics %: give one per event (a JSON null for none), or NULL for none at all', cardinality(emit_batch.roles), n
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF emit_batch.traceparents IS NOT NULL AND cardinality(emit_batch.traceparents) <> n THEN
    RAISE EXCEPTION 'outbox.emit_batch: traceparents has % elements, topics %', cardinality(emit_batch.traceparents), n
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF EXISTS (SELECT 1 FROM unnest(emit_batch.topics) t WHERE starts_with(t, 'outboxd.')) THEN
    RAISE EXCEPTION 'topics outboxd.* are reserved for outboxd''s control rows'
      USING ERRCODE = 'check_violation', CONSTRAINT = 'events_topic_reserved';
  END IF;
  RETURN QUERY
  INSERT INTO outbox.events (topic, payload, target_users, target_roles, traceparent)
  SELECT t, p,
         CASE WHEN u IS NULL OR u = 'null' THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text(u)) END,
         CASE WHEN r IS NULL OR r = 'null' THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text(r)) END,
         tp
  FROM unnest(emit_batch.topics, emit_batch.payloads, emit_batch.users, emit_batch.roles, emit_batch.traceparents)
       WITH ORDINALITY AS x(t, p, u, r, tp, ord)
  ORDER BY ord
  RETURNING events.id;
END $$;
-- +goose StatementEnd

DROP VIEW outbox.online_users;
DROP TABLE outbox.presence_users;
DROP TABLE outbox.presence_sessions;
DROP TABLE outbox.presence_replicas;
