-- Producers write events; the relay alone numbers them.
--
-- 1. seq and delivered_at are the relay's: an INSERT that sets either is
--    refused by a trigger, whoever the caller is (grants alone would not
--    stop the table's owner or an app that connects as it). A forged seq
--    would reach clients out of turn and then make every sequencer batch
--    fail on the unique index: delivery would stop for everyone.
-- 2. The producer functions run with their owner's rights (SECURITY
--    DEFINER, search_path pinned), so a producer role needs EXECUTE on them
--    and nothing on the tables (docs/security.md).
-- 3. emit_batch inserts many events in one call, for outbox.EmitBatch.
-- 4. Targets: an empty array is an empty set. Only NULL users AND NULL
--    roles reach everyone (the relay's filters read it so since this
--    version); this file changes no data.

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION outbox.refuse_relay_columns() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.seq IS NOT NULL THEN
    RAISE EXCEPTION 'outbox.events.seq is assigned by the relay: insert events without it'
      USING ERRCODE = 'insufficient_privilege', COLUMN = 'seq';
  END IF;
  RAISE EXCEPTION 'outbox.events.delivered_at is set by the relay: insert events without it'
    USING ERRCODE = 'insufficient_privilege', COLUMN = 'delivered_at';
END $$;
-- +goose StatementEnd

CREATE TRIGGER events_relay_owns_seq BEFORE INSERT ON outbox.events
  FOR EACH ROW WHEN (NEW.seq IS NOT NULL OR NEW.delivered_at IS NOT NULL)
  EXECUTE FUNCTION outbox.refuse_relay_columns();

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
CREATE FUNCTION outbox.emit_batch(topics text[], payloads jsonb[], users jsonb[], roles jsonb[], traceparents text[])
RETURNS SETOF bigint
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  -- Targets come as JSON arrays because SQL arrays cannot be ragged; a
  -- NULL element is "no such target" (NULL), an empty array an empty set.
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

ALTER FUNCTION outbox.head() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION outbox.epoch() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- Functions are executable by PUBLIC by default; a definer's function must
-- not be. Grant EXECUTE to the producer roles (docs/security.md).
REVOKE EXECUTE ON FUNCTION outbox.emit(text, jsonb, text[], text[], text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION outbox.emit_batch(text[], jsonb[], jsonb[], jsonb[], text[]) FROM PUBLIC;

COMMENT ON FUNCTION outbox.emit(text, jsonb, text[], text[], text) IS 'Insert an event; call it as the last statement of the transaction. users and roles are a union; only both NULL reaches everyone, an empty array nobody.';
COMMENT ON FUNCTION outbox.emit_batch(text[], jsonb[], jsonb[], jsonb[], text[]) IS 'Insert several events in the order given (outbox.EmitBatch); returns their ids.';

-- +goose Down
ALTER FUNCTION outbox.epoch() SECURITY INVOKER RESET search_path;
ALTER FUNCTION outbox.head() SECURITY INVOKER RESET search_path;
DROP FUNCTION outbox.emit_batch(text[], jsonb[], jsonb[], jsonb[], text[]);
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox.emit(topic text, payload jsonb, users text[] DEFAULT NULL,
                                       roles text[] DEFAULT NULL, traceparent text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql VOLATILE SECURITY INVOKER
AS $$
  INSERT INTO outbox.events (topic, payload, target_users, target_roles, traceparent)
  VALUES (emit.topic, emit.payload, emit.users, emit.roles, emit.traceparent)
  RETURNING id
$$;
-- +goose StatementEnd
ALTER FUNCTION outbox.emit(text, jsonb, text[], text[], text) RESET search_path;
GRANT EXECUTE ON FUNCTION outbox.emit(text, jsonb, text[], text[], text) TO PUBLIC;
DROP TRIGGER events_relay_owns_seq ON outbox.events;
DROP FUNCTION outbox.refuse_relay_columns();
