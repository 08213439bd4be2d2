"""Tests of the outbox helpers against the real PostgreSQL in DATABASE_URL
(with the outbox schema migrated). Run: python3 -m unittest test_outbox.py
(cmd/outboxd's tests run it in CI)."""
import os
import unittest

from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from outbox import disconnect, emit, install_hooks, queue_event


def _url():
    url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    return url.replace("postgres://", "postgresql://", 1)


class EmitTargets(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.engine = create_engine(_url())

    @classmethod
    def tearDownClass(cls):
        cls.engine.dispose()

    def stored(self, **targets):
        with Session(self.engine) as session, session.begin():
            event_id = emit(session, "task_event", {"n": 1}, **targets)
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT target_users, target_roles FROM outbox.events WHERE id = :id"),
                                {"id": event_id}).one()

    def test_no_targets_broadcast(self):
        self.assertEqual(tuple(self.stored()), (None, None))

    def test_empty_lists_are_empty_sets_not_null(self):
        # A recipient query that found nobody must reach nobody.
        self.assertEqual(tuple(self.stored(users=[])), ([], None))
        self.assertEqual(tuple(self.stored(roles=[])), (None, []))
        self.assertEqual(tuple(self.stored(users=set(), roles=())), ([], []))

    def test_targets_pass_through(self):
        self.assertEqual(tuple(self.stored(users=["u1"], roles=("LEVEL_1",))), (["u1"], ["LEVEL_1"]))

    def test_queued_events_follow_the_transaction(self):
        class S(Session):
            pass

        install_hooks(S)
        with self.engine.connect() as conn:
            before = conn.execute(text("SELECT count(*) FROM outbox.events")).scalar_one()
        with S(self.engine) as session:
            queue_event(session, "task_event", {"n": 2}, users=[])
            session.rollback()
            queue_event(session, "task_event", {"n": 3}, users=[])
            session.commit()
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT payload, target_users FROM outbox.events ORDER BY id OFFSET :n"),
                                {"n": before}).all()
        self.assertEqual([(r.payload, r.target_users) for r in rows], [({"n": 3}, [])])


class Disconnect(unittest.TestCase):
    def test_writes_a_control_row_in_the_transaction(self):
        engine = create_engine(_url())
        try:
            with Session(engine) as session, session.begin():
                disconnect(session, ["u7"], "role changed")
            with Session(engine) as session:
                session.execute(text("SELECT 1"))
                disconnect(session, ["u8"])
                session.rollback()
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT payload, target_users FROM outbox.events WHERE topic = 'outboxd.disconnect' ORDER BY id")).all()
            self.assertEqual([(r.payload, r.target_users) for r in rows], [({"reason": "role changed"}, ["u7"])])
            with Session(engine) as session:
                with self.assertRaises(ValueError):
                    disconnect(session, [])
        finally:
            engine.dispose()


if __name__ == "__main__":
    unittest.main()
