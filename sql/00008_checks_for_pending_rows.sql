-- The row checks of 00001 (topic format, payload an object of at most
-- 256 KiB, no NULL target, traceparent length) are the producers' input
-- validation. PostgreSQL evaluates every CHECK constraint again on every
-- UPDATE, so the sequencer — which only sets seq and delivered_at — paid
-- for all of them on every row it numbered, the payload's conversion to
-- text and the topic's regular expression included: measured, 30 % of the
-- CPU its backend spends on a batch of 16 rows (`go test -bench
-- SequencerBatchCPU ./relay`, BENCHMARKS.md).
--
-- Each check now holds for rows not yet sequenced: `seq IS NOT NULL OR
-- (the check)`. An INSERT cannot carry a seq (00004's trigger refuses it
-- before the checks run), so every row is checked as it was, by the
-- same constraint names and the same error (23514); the sequencer's
-- UPDATE stops at `seq IS NOT NULL`. A sequenced row is not the producers'
-- to change (docs/least-privilege.sql grants them no UPDATE).
--
-- Each constraint is replaced in one ALTER TABLE (a short exclusive lock),
-- NOT VALID, and validated afterwards, which only needs a lock that lets
-- producers insert.

-- +goose NO TRANSACTION
-- +goose Up
ALTER TABLE outbox.events
  DROP CONSTRAINT events_topic_format_check,
  ADD CONSTRAINT events_topic_format_check
    CHECK (seq IS NOT NULL OR topic ~ '^[a-z][a-z0-9_.-]{0,63}$') NOT VALID,
  DROP CONSTRAINT events_payload_object_check,
  ADD CONSTRAINT events_payload_object_check
    CHECK (seq IS NOT NULL OR jsonb_typeof(payload) = 'object') NOT VALID,
  DROP CONSTRAINT events_payload_max_256kib_check,
  ADD CONSTRAINT events_payload_max_256kib_check
    CHECK (seq IS NOT NULL OR octet_length(payload::text) <= 262144) NOT VALID,
  DROP CONSTRAINT events_target_users_no_null_check,
  ADD CONSTRAINT events_target_users_no_null_check
    CHECK (seq IS NOT NULL OR array_position(target_users, NULL) IS NULL) NOT VALID,
  DROP CONSTRAINT events_target_roles_no_null_check,
  ADD CONSTRAINT events_target_roles_no_null_check
    CHECK (seq IS NOT NULL OR array_position(target_roles, NULL) IS NULL) NOT VALID,
  DROP CONSTRAINT events_traceparent_length_check,
  ADD CONSTRAINT events_traceparent_length_check
    CHECK (seq IS NOT NULL OR octet_length(traceparent) <= 512) NOT VALID;

ALTER TABLE outbox.events VALIDATE CONSTRAINT events_topic_format_check;
ALTER TABLE outbox.events VALIDATE CONSTRAINT events_payload_object_check;
ALTER TABLE outbox.events VALIDATE CONSTRAINT events_payload_max_256kib_check;
ALTER TABLE outbox.events VALIDATE CONSTRAINT events_target_users_no_null_check;
ALTER TABLE outbox.events VALIDATE CONSTRAINT events_target_roles_no_null_check;
ALTER TABLE outbox.events VALIDATE CONSTRAINT events_traceparent_length_check;

-- +goose Down
ALTER TABLE outbox.events
  DROP CONSTRAINT events_topic_format_check,
  ADD CONSTRAINT events_topic_format_check
    CHECK (topic ~ '^[a-z][a-z0-9_.-]{0,63}$') NOT VALID,
  DROP CONSTRAINT events_payload_object_check,
  ADD CONSTRAINT events_payload_object_check
    CHECK (jsonb_typeof(payload) = 'object') NOT VALID,
  DROP CONSTRAINT events_payload_max_256kib_check,
  ADD CONSTRAINT events_payload_max_256kib_check
    CHECK (octet_length(payload::text) <= 262144) NOT VALID,
  DROP CONSTRAINT events_target_users_no_null_check,
  ADD CONSTRAINT events_target_users_no_null_check
    CHECK (array_position(target_users, NULL) IS NULL) NOT VALID,
  DROP CONSTRAINT events_target_roles_no_null_check,
  ADD CONSTRAINT events_target_roles_no_null_check
    CHECK (array_position(target_roles, NULL) IS NULL) NOT VALID,
  DROP CONSTRAINT events_traceparent_length_check,
  ADD CONSTRAINT events_traceparent_length_check
    CHECK (octet_length(traceparent) <= 512) NOT VALID;

ALTER TABLE outbox.events VALIDATE CONSTRAINT events_topic_format_check;
ALTER TABLE outbox.events VALIDATE CONSTRAINT events_payload_object_check;
ALTER TABLE outbox.events VALIDATE CONSTRAINT events_payload_max_256kib_check;
ALTER TABLE outbox.events VALIDATE CONSTRAINT events_target_users_no_null_check;
ALTER TABLE outbox.events VALIDATE CONSTRAINT events_target_roles_no_null_check;
ALTER TABLE outbox.events VALIDATE CONSTRAINT events_traceparent_length_check;
