"""The SQLAlchemy side against the real PostgreSQL in DATABASE_URL (with
the outbox schema migrated): emit's targets, queued and tracked events
following the transaction, disconnect. go test ./clients/python runs them."""
import os
import unittest

from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from outboxd import disconnect, emit
from outboxd.orm import install_hooks, queue_event, track


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

    def test_broadcast_is_explicit(self):
        self.assertEqual(tuple(self.stored(broadcast=True)), (None, None))
        # No targets, or a None where a list belongs, never reaches everyone.
        for bad in ({}, {"users": None, "roles": None}):
            with Session(self.engine) as session, session.begin():
                with self.assertRaisesRegex(ValueError, "no targets"):
                    emit(session, "task_event", {"n": 1}, **bad)
                with self.assertRaisesRegex(ValueError, "no targets"):
                    queue_event(session, "task_event", {"n": 1}, **bad)
        with Session(self.engine) as session, session.begin():
            with self.assertRaisesRegex(ValueError, "without users and roles"):
                emit(session, "task_event", {"n": 1}, users=["u1"], broadcast=True)
        with self.assertRaisesRegex(ValueError, "no targets"):
            track(TrackedTask, "task_event")

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
                rows = conn.execute(text("SELECT payload, target_users FROM outbox.events WHERE topic = 'outboxd.disconnect' "
                                         "AND target_users && ARRAY['u7', 'u8'] ORDER BY id")).all()
            self.assertEqual([(r.payload["reason"], r.target_users) for r in rows], [("role changed", ["u7"])])
            self.assertIsInstance(rows[0].payload["revoked_at"], int)
            with Session(engine) as session:
                with self.assertRaises(ValueError):
                    disconnect(session, [])
        finally:
            engine.dispose()


from sqlalchemy import BigInteger, Column, Identity, String  # noqa: E402
from sqlalchemy.orm import declarative_base  # noqa: E402

TrackBase = declarative_base()


class TrackedTask(TrackBase):
    __tablename__ = "tracked_tasks"
    id = Column(BigInteger, Identity(always=True), primary_key=True)
    title = Column(String, nullable=False)
    status = Column(String, nullable=False, default="pending")
    assignee = Column(String, nullable=False)


class TrackedSession(Session):
    pass


track(TrackedTask, "task_event", on=("insert", "update", "delete"), fields=("status",),
      roles=["LEVEL_1"], users=lambda t: [t.assignee])


class TrackedNote(TrackBase):
    """A row whose recipients come from a column that may be NULL."""
    __tablename__ = "tracked_notes"
    id = Column(BigInteger, Identity(always=True), primary_key=True)
    acl = Column(String)


track(TrackedNote, "notification", on=("insert",), users=lambda n: n.acl.split(",") if n.acl else None)
install_hooks(TrackedSession)


class Track(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.engine = create_engine(_url())
        TrackBase.metadata.create_all(cls.engine)

    @classmethod
    def tearDownClass(cls):
        cls.engine.dispose()

    def events(self):
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT id, topic, payload, target_users, target_roles FROM outbox.events "
                                     "WHERE id > :after AND topic = 'task_event' ORDER BY id"), {"after": self.after}).all()
        self.after = max([self.after] + [r.id for r in rows])
        return [(r.payload, r.target_users, r.target_roles) for r in rows]

    def setUp(self):
        with self.engine.connect() as conn:
            self.after = conn.execute(text("SELECT coalesce(max(id), 0) FROM outbox.events")).scalar_one()

    def test_targets_callback_returning_none_fails_the_commit(self):
        # users=lambda row: row.acl with acl NULL used to broadcast.
        with TrackedSession(self.engine) as session:
            session.add(TrackedNote(acl=None))
            with self.assertRaisesRegex(ValueError, "users callback returned None"):
                session.commit()
        with TrackedSession(self.engine) as session:
            session.add(TrackedNote(acl="u1,u2"))
            session.commit()
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT target_users, target_roles FROM outbox.events "
                                     "WHERE id > :after AND topic = 'notification' ORDER BY id"), {"after": self.after}).all()
        self.assertEqual([tuple(r) for r in rows], [(["u1", "u2"], None)])

    def test_lifecycle(self):
        with TrackedSession(self.engine) as session:
            task = TrackedTask(title="Patrulla", assignee="u1")
            session.add(task)
            session.commit()
            task_id = task.id
        evs = self.events()
        self.assertEqual(evs, [({"action": "created", "id": task_id, "status": "pending"}, ["u1"], ["LEVEL_1"])])

        # A tracked field changed twice, over two flushes: one event per commit.
        with TrackedSession(self.engine) as session:
            task = session.get(TrackedTask, task_id)
            task.status = "in_progress"
            session.flush()
            task.status = "done"
            session.commit()
        evs = self.events()
        self.assertEqual(len(evs), 1)
        self.assertEqual(evs[0][0]["changes"], {"status": {"old": "pending", "new": "done"}})
        self.assertEqual(evs[0][0]["action"], "updated")

        # Untracked changes emit nothing; rolled-back ones neither.
        with TrackedSession(self.engine) as session:
            task = session.get(TrackedTask, task_id)
            task.title = "Patrulla norte"
            session.commit()
        with TrackedSession(self.engine) as session:
            task = session.get(TrackedTask, task_id)
            task.status = "blocked"
            session.flush()
            session.rollback()
        self.assertEqual(self.events(), [])
        with self.engine.connect() as conn:
            status = conn.execute(text("SELECT status FROM tracked_tasks WHERE id = :id"), {"id": task_id}).scalar_one()
        self.assertEqual(status, "done")

        # Created and deleted before commit: nothing happened.
        with TrackedSession(self.engine) as session:
            ghost = TrackedTask(title="ghost", assignee="u2")
            session.add(ghost)
            session.flush()
            session.delete(ghost)
            session.commit()
        self.assertEqual(self.events(), [])

        with TrackedSession(self.engine) as session:
            session.delete(session.get(TrackedTask, task_id))
            session.commit()
        self.assertEqual(self.events(), [({"action": "deleted", "id": task_id}, ["u1"], ["LEVEL_1"])])
