-- What a producer may no longer do to the stream, and what a disconnect
-- now leaves behind.
--
-- 1. created_at belongs to the database. A BEFORE INSERT trigger sets it
--    to clock_timestamp(), whatever the INSERT gave: a row with
--    created_at = 'infinity' (any role with INSERT could write one) made
--    the tailer's read fail on every replica, for as long as the row
--    lived. (The relay also decodes such a value, should an UPDATE store
--    one: relay.Event.Malformed.)
--
-- 2. Targets are bounded per row: at most 1,000 entries (users plus
--    roles) and 64 KiB of their text. The sequencer enters every target
--    of every row it numbers into the entitlement indexes (00007); one
--    commit of 1,000 rows × 2,500 users (2.5 million index entries) made
--    its batch pass its timeout, for ever. With the bound one row costs the
--    sequencer at most ~1,000 index entries, and the sequencer sizes its
--    batches by rows and target entries (relay.SequencerConfig.BatchCost).
--    An app that must reach more users than that targets a role, or emits
--    several rows. Like 00008's checks it holds for rows not yet
--    sequenced; NOT VALID: rows already in the table are left as they are.
--
-- 3. outbox.emit_batch refuses arrays whose lengths differ from topics:
--    unnest pads the shorter ones with NULLs, and a NULL pair of targets is
--    a broadcast — a forgotten target reached everyone.
--
-- 4. outbox.disconnect() also records a revocation, (user, time), in the
--    caller's transaction: replicas load them at start and learn of new
--    ones from the control row (its payload carries revoked_at), and
--    refuse a token of a revoked user issued (iat) before it. The relay
--    deletes revocations older than the longest token lifetime it accepts
--    (JWT_MAX_TTL). A disconnect of more than 1,000 users writes one
--    control row per 1,000 (bound 2).

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION outbox.set_created_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.created_at := clock_timestamp();
  RETURN NEW;
END $$;
-- +goose StatementEnd

CREATE TRIGGER events_created_at BEFORE INSERT ON outbox.events
  FOR EACH ROW EXECUTE FUNCTION outbox.set_created_at();

ALTER TABLE outbox.events
  ADD CONSTRAINT events_targets_max_1000_check
    CHECK (seq IS NOT NULL OR coalesce(cardinality(target_users), 0) + coalesce(cardinality(target_roles), 0) <= 1000) NOT VALID,
  ADD CONSTRAINT events_targets_max_64kib_check
    CHECK (seq IS NOT NULL OR coalesce(octet_length(array_to_string(target_users, '')), 0)
                            + coalesce(octet_length(array_to_string(target_roles, '')), 0) <= 65536) NOT VALID;

CREATE TABLE outbox.revocations (
  user_id    text        PRIMARY KEY,
  revoked_at timestamptz NOT NULL
);
COMMENT ON TABLE outbox.revocations IS 'Written by outbox.disconnect(): tokens of user_id issued (iat) before revoked_at, in whole seconds, are refused. Maintained by outboxd.';

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

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox.disconnect(users text[], reason text DEFAULT 'revoked')
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  id bigint;
  at timestamptz := date_trunc('second', clock_timestamp());
  chunk text[];
  i int := 1;
BEGIN
  IF disconnect.users IS NULL THEN
    RAISE EXCEPTION 'outbox.disconnect: users is required (NULL would mean every user)'
      USING ERRCODE = 'null_value_not_allowed';
  END IF;
  IF array_position(disconnect.users, NULL) IS NOT NULL THEN
    RAISE EXCEPTION 'outbox.disconnect: users holds a NULL'
      USING ERRCODE = 'null_value_not_allowed';
  END IF;
  IF cardinality(disconnect.users) = 0 THEN
    RETURN NULL;
  END IF;
  INSERT INTO outbox.revocations AS rv (user_id, revoked_at)
  SELECT DISTINCT u, at FROM unnest(disconnect.users) u
  ON CONFLICT (user_id) DO UPDATE SET revoked_at = greatest(rv.revoked_at, excluded.revoked_at);
  WHILE i <= cardinality(disconnect.users) LOOP
    chunk := disconnect.users[i:i + 999];
    INSERT INTO outbox.events (topic, payload, target_users, target_roles)
    VALUES ('outboxd.disconnect',
            jsonb_build_object('reason', left(coalesce(disconnect.reason, 'revoked'), 120),
                               'revoked_at', extract(epoch FROM at)::bigint),
            chunk, '{}')
    RETURNING events.id INTO id;
    i := i + 1000;
  END LOOP;
  RETURN id;
END $$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox.disconnect(users text[], reason text DEFAULT 'revoked')
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  id bigint;
BEGIN
  IF disconnect.users IS NULL THEN
    RAISE EXCEPTION 'outbox.disconnect: users is required (NULL would mean every user)'
      USING ERRCODE = 'null_value_not_allowed';
  END IF;
  IF cardinality(disconnect.users) = 0 THEN
    RETURN NULL;
  END IF;
  INSERT INTO outbox.events (topic, payload, target_users, target_roles)
  VALUES ('outboxd.disconnect', jsonb_build_object('reason', left(coalesce(disconnect.reason, 'revoked'), 120)),
          disconnect.users, '{}')
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
BEGIN
  IF EXISTS (SELECT 1 FROM unnest(topics) t WHERE starts_with(t, 'outboxd.')) THEN
    RAISE EXCEPTION 'topics outboxd.* are reserved for outboxd''s control rows'
      USING ERRCODE = 'check_violation', CONSTRAINT = 'events_topic_reserved';
  END IF;
  RETURN QUERY
  INSERT INTO outbox.events (topic, payload, target_users, target_roles, traceparent)
  SELECT t, p,
         CASE WHEN u IS NULL OR u = 'null' THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text(u)) END,
         CASE WHEN r IS NULL OR r = 'null' THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text(r)) END,
         tp
  FROM unnest(topics, payloads, users, roles, traceparents) WITH ORDINALITY AS x(t, p, u, r, tp, ord)
  ORDER BY ord
  RETURNING events.id;
END $$;
-- +goose StatementEnd

DROP TABLE outbox.revocations;

ALTER TABLE outbox.events
  DROP CONSTRAINT events_targets_max_64kib_check,
  DROP CONSTRAINT events_targets_max_1000_check;

DROP TRIGGER events_created_at ON outbox.events;
DROP FUNCTION outbox.set_created_at();
