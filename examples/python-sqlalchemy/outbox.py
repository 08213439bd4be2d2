"""outboxd producer helpers for SQLAlchemy (1.4 and 2.0).

The rule: an event is written in the SAME transaction as the change it
describes, as the LAST statement before COMMIT. Then the event exists if and
only if the change committed, and outboxd delivers events in commit order.

Two ways to do it:

    # 1. explicitly, right before commit
    with Session(engine) as session, session.begin():
        task.status = "done"
        session.flush()
        emit(session, "task_event", {"task_id": task.id, "status": "done"}, roles=["LEVEL_1"])

    # 2. queue it anywhere in the unit of work; install_hooks() emits every
    #    queued event in a before_commit hook, after the final flush
    install_hooks(Session)
    queue_event(session, "efectivo_event", {"efectivo_id": 7, "disponible": False})
    session.commit()
"""
import json

from sqlalchemy import event, text

_EMIT = text(
    "SELECT outbox.emit(:topic, CAST(:payload AS jsonb), CAST(:users AS text[]), "
    "CAST(:roles AS text[]), :traceparent)"
)
_QUEUE_KEY = "outboxd.events"


def emit(session, topic, data, users=None, roles=None, traceparent=None):
    """Insert one event through the session's connection and return its id.

    users: JWT "sub" values; roles: role names. A union. An empty list is an
    empty set (a recipient query that found nobody reaches nobody); only
    users=None AND roles=None (the defaults) broadcast to everyone.
    A bad topic or payload fails here, inside your transaction, with the name
    of the constraint it broke (e.g. events_topic_format_check).
    """
    return session.execute(
        _EMIT,
        {
            "topic": topic,
            "payload": json.dumps(data),
            "users": None if users is None else list(users),
            "roles": None if roles is None else list(roles),
            "traceparent": traceparent,
        },
    ).scalar_one()


_DISCONNECT = text("SELECT outbox.disconnect(CAST(:users AS text[]), :reason)")


def disconnect(session, users, reason="revoked"):
    """Close every live session of these users (WebSocket code 4003, reason)
    once they have every event committed before this transaction, on every
    outboxd replica. Call it in the transaction that changes their
    permissions: the cut happens if and only if the change commits, and the
    browser then asks the app for a new token."""
    users = list(users)
    if not users:
        raise ValueError("disconnect: users must not be empty")
    session.execute(_DISCONNECT, {"users": users, "reason": reason})


def queue_event(session, topic, data, users=None, roles=None):
    """Remember an event to emit at commit (see install_hooks).

    The session's transaction is begun here if it has not been yet, so that
    a rollback() that follows drops the event (with no transaction begun,
    SQLAlchemy's rollback() is a no-op that fires no event, and the event
    would leak into the next commit).
    """
    session.connection()
    session.info.setdefault(_QUEUE_KEY, []).append((topic, data, users, roles))


def install_hooks(session_class):
    """Emit queued events as the last statements of each commit."""

    @event.listens_for(session_class, "before_commit")
    def _emit_queued(session):
        # Flush FIRST: the model writes go out, and after_flush listeners get
        # their chance to queue events; only then are the queued events read.
        session.flush()
        queued = session.info.pop(_QUEUE_KEY, [])
        for topic, data, users, roles in queued:
            emit(session, topic, data, users, roles)

    @event.listens_for(session_class, "after_rollback")
    def _drop_queued(session):
        session.info.pop(_QUEUE_KEY, None)
