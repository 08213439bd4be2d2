-- outboxd from plain SQL: any language that can run a statement can produce
-- events. Run with: psql -h 127.0.0.1 -U postgres -f examples/sql/emit.sql

-- 1. The event is the LAST statement of the transaction that makes the change.
BEGIN;
CREATE TEMP TABLE IF NOT EXISTS demo_tasks_sql (id int PRIMARY KEY, status text);
INSERT INTO demo_tasks_sql VALUES (1, 'pending') ON CONFLICT (id) DO UPDATE SET status = 'in_progress';
SELECT outbox.emit(
  'task_event',                                            -- topic: ^[a-z][a-z0-9_.-]{0,63}$
  jsonb_build_object('task_id', 1, 'status', 'in_progress'),-- payload: a JSON object, ≤ 256 KiB
  users => ARRAY['u1'],                                    -- JWT sub values
  roles => ARRAY['LEVEL_1']                                -- roles; users ∪ roles; both NULL: everyone
);
COMMIT;

-- 2. Everyone: no targets.
SELECT outbox.emit('system_event', '{"level": "warning", "message": "Mantenimiento a las 22:00"}');

-- 3. With the producer's trace context, so the relay's span links to it.
SELECT outbox.emit('dashboard_event', '{"open_tasks": 12}', NULL, ARRAY['admin'],
                   '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');

-- 4. A rolled-back transaction produces nothing.
BEGIN;
SELECT outbox.emit('task_event', '{"task_id": 2}');
ROLLBACK;

-- 5. Bad rows fail at INSERT, in your transaction, naming the rule:
--    SELECT outbox.emit('Bad Topic', '{}');
--    ERROR: new row for relation "events" violates check constraint "events_topic_format_check"

-- 6. State and stream position in one snapshot: hand both to the browser,
--    which connects with ?since=<head> (no snapshot/subscribe race).
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT count(*) AS tasks FROM demo_tasks_sql;
SELECT outbox.head() AS head;
COMMIT;
