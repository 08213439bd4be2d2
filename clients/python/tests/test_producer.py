"""emit, emit_batch, disconnect, head, epoch and position on both kinds of
handle: a psycopg2 connection (and cursor) and a SQLAlchemy session."""
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

import outboxd
from outboxd import Event, disconnect, emit, emit_batch, epoch, head, position


def stored(pg, ids):
    with pg.cursor() as cur:
        cur.execute("SELECT id, topic, payload, target_users, target_roles, traceparent FROM outbox.events "
                    "WHERE id = ANY(%s) ORDER BY id", (list(ids),))
        return cur.fetchall()


def test_emit_through_psycopg2_commits_with_the_transaction(pg):
    event_id = emit(pg, "task_event", {"task_id": 1, "when": "now"}, users=["u1"], roles=[])
    pg.rollback()
    assert stored(pg, [event_id]) == []  # rolled back with the change: never relayed
    with pg.cursor() as cur:  # a cursor works too
        event_id = emit(cur, "task_event", {"task_id": 2}, users=["u1"], roles=[])
    pg.commit()
    assert stored(pg, [event_id]) == [(event_id, "task_event", {"task_id": 2}, ["u1"], [], None)]


def test_emit_through_sqlalchemy(engine, pg):
    with Session(engine) as session, session.begin():
        event_id = emit(session, "efectivo_event", {"id": 7}, broadcast=True)
    assert stored(pg, [event_id])[0][3:5] == (None, None)


def test_targets_and_payload_are_checked_before_the_database(pg):
    with pytest.raises(ValueError, match="no targets"):
        emit(pg, "task_event", {"n": 1})
    with pytest.raises(ValueError, match="without users and roles"):
        emit(pg, "task_event", {"n": 1}, roles=["LEVEL_1"], broadcast=True)
    with pytest.raises(ValueError, match="not the string"):
        emit(pg, "task_event", {"n": 1}, users="u1")  # would be u and 1
    with pytest.raises(ValueError, match="must be a dict"):
        emit(pg, "task_event", [1, 2], broadcast=True)
    # What only the database knows fails in your transaction, by name.
    with pytest.raises(Exception, match="events_topic_format_check"):
        emit(pg, "Bad Topic!", {"n": 1}, broadcast=True)


def test_emit_batch_keeps_the_order_and_each_events_targets(pg):
    outboxd.set_traceparent_func(lambda: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    try:
        ids = emit_batch(pg, [
            Event("task_event", {"n": 1}, users=["u1"]),
            Event("task_event", {"n": 2}, roles=[]),
            Event("system_event", {"n": 3}, broadcast=True, traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01"),
        ])
    finally:
        outboxd.set_traceparent_func(None)
    pg.commit()
    assert ids == sorted(ids) and len(ids) == 3
    rows = stored(pg, ids)
    assert [(r[2], r[3], r[4]) for r in rows] == [({"n": 1}, ["u1"], None), ({"n": 2}, None, []),
                                                   ({"n": 3}, None, None)]
    assert rows[0][5].startswith("00-0af7651916cd") and rows[2][5] == "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    assert emit_batch(pg, []) == []
    with pytest.raises(ValueError, match=r"emit_batch\[1\]: no targets"):
        emit_batch(pg, [Event("task_event", {"n": 1}, users=[]), Event("task_event", {"n": 2})])


def test_emit_batch_through_sqlalchemy(engine, pg):
    with Session(engine) as session, session.begin():
        ids = emit_batch(session, [Event("task_event", {"k": i}, users=["u%d" % i]) for i in range(5)])
    assert [r[3] for r in stored(pg, ids)] == [["u%d" % i] for i in range(5)]


def test_disconnect_writes_a_control_row(pg):
    disconnect(pg, ["u9"], "role changed")
    pg.commit()
    with pg.cursor() as cur:
        cur.execute("SELECT payload, target_users FROM outbox.events WHERE topic = 'outboxd.disconnect' "
                    "AND target_users = ARRAY['u9'] ORDER BY id DESC LIMIT 1")
        payload, users = cur.fetchone()
    assert payload["reason"] == "role changed" and users == ["u9"]
    for bad in ([], "u9"):
        with pytest.raises(ValueError):
            disconnect(pg, bad)


def test_position_is_the_snapshots(pg, engine):
    h, e = position(pg)
    assert h == head(pg) and e == epoch(pg) and len(e) > 0
    pg.rollback()
    # In REPEATABLE READ the position stays with the snapshot while others commit.
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            before = head(conn)
            with Session(engine) as other, other.begin():
                emit(other, "task_event", {"late": True}, users=[])
            assert head(conn) == before
