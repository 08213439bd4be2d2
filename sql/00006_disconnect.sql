-- Transactional disconnect. outbox.disconnect(users, reason) writes a
-- control row (topic outboxd.disconnect) in the caller's transaction: when
-- the relay reaches it, in seq order, every session of those users on every
-- replica is given every earlier event and then closed with 4003 and the
-- reason. Revoke a user's permissions and cut their live sessions in the
-- same commit. Topics starting with outboxd. are reserved for control rows:
-- the producer functions refuse them, and they are never delivered as
-- frames.

-- +goose Up
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

-- +goose StatementBegin
CREATE FUNCTION outbox.disconnect(users text[], reason text DEFAULT 'revoked')
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

REVOKE EXECUTE ON FUNCTION outbox.disconnect(text[], text) FROM PUBLIC;
COMMENT ON FUNCTION outbox.disconnect(text[], text) IS 'Close every live session of these users (code 4003, reason) once they have every event committed before this; call it in the transaction that changes their permissions.';

-- +goose Down
DROP FUNCTION outbox.disconnect(text[], text);
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox.emit(topic text, payload jsonb, users text[] DEFAULT NULL,
                                       roles text[] DEFAULT NULL, traceparent text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  INSERT INTO outbox.events (topic, payload, target_users, target_roles, traceparent)
  VALUES (emit.topic, emit.payload, emit.users, emit.roles, emit.traceparent)
  RETURNING id
$$;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox.emit_batch(topics text[], payloads jsonb[], users jsonb[], roles jsonb[], traceparents text[])
RETURNS SETOF bigint
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  INSERT INTO outbox.events (topic, payload, target_users, target_roles, traceparent)
  SELECT t, p,
         CASE WHEN u IS NULL OR u = 'null' THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text(u)) END,
         CASE WHEN r IS NULL OR r = 'null' THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text(r)) END,
         tp
  FROM unnest(topics, payloads, users, roles, traceparents) WITH ORDINALITY AS x(t, p, u, r, tp, ord)
  ORDER BY ord
  RETURNING id
$$;
-- +goose StatementEnd
