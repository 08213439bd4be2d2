"""Write events in your transaction: emit, emit_batch, disconnect, and read
the stream position: head, epoch, position.

Every function takes the handle your transaction runs on — a SQLAlchemy
Session or Connection, or a DB-API connection or cursor (psycopg2) — and
runs its statement there, so the event commits if and only if your change
does. Call emit as the last statement before COMMIT: outboxd delivers in
commit order.

Targets: ``users`` (JWT ``sub`` values) and ``roles`` are a union. An empty
list is an empty set — a recipient query that found nobody reaches nobody.
``broadcast=True``, with neither, sends to every client; no targets without
it is refused (ValueError), never everyone.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence, Tuple

__all__ = [
    "Event", "emit", "emit_batch", "disconnect", "head", "epoch", "position",
    "set_traceparent_func", "check_targets",
]

_traceparent_func: Optional[Callable[[], Optional[str]]] = None


def set_traceparent_func(fn: Optional[Callable[[], Optional[str]]]) -> None:
    """Install a function returning the current span's W3C traceparent (or
    None): emit stores it with each event, and outboxd's consumer span links
    to it. With opentelemetry-api, one built on its propagator."""
    global _traceparent_func
    _traceparent_func = fn


def current_traceparent() -> Optional[str]:
    return _traceparent_func() if _traceparent_func else None


def check_targets(where: str, users: Any, roles: Any, broadcast: bool) -> None:
    """Broadcasting is explicit: no targets at all is a mistake (a forgotten
    argument, a lookup that returned None), never everyone."""
    if broadcast:
        if users is not None or roles is not None:
            raise ValueError("%s: broadcast=True sends to everyone; give it without users and roles" % where)
    elif users is None and roles is None:
        raise ValueError("%s: no targets: give users and/or roles (an empty list reaches nobody), "
                         "or broadcast=True to send to every client" % where)
    for name, value in (("users", users), ("roles", roles)):
        if isinstance(value, (str, bytes)):
            raise ValueError("%s: %s must be a list of strings, not the string %r" % (where, name, value))


@dataclass
class Event:
    """One event for emit_batch (targets as in emit)."""
    topic: str
    data: Any
    users: Optional[Sequence[str]] = None
    roles: Optional[Sequence[str]] = None
    broadcast: bool = False
    traceparent: Optional[str] = field(default=None)


_NAMED = re.compile(r"%\((\w+)\)s")


def _is_sqlalchemy(db: Any) -> bool:
    return any(c.__module__.startswith("sqlalchemy.") for c in type(db).__mro__)


def execute(db: Any, sql: str, params: Optional[dict] = None) -> list:
    """Run sql (``%(name)s`` placeholders) on db — a SQLAlchemy Session or
    Connection, or a DB-API connection or cursor — and return its rows."""
    params = params or {}
    if _is_sqlalchemy(db):
        from sqlalchemy import text

        result = db.execute(text(_NAMED.sub(r":\1", sql)), params)
        return list(result.all()) if result.returns_rows else []
    if hasattr(db, "cursor"):
        cur = db.cursor()
        try:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []
        finally:
            cur.close()
    db.execute(sql, params)
    return list(db.fetchall()) if db.description else []


def _payload(where: str, data: Any) -> str:
    if not isinstance(data, dict):
        raise ValueError("%s: data must be a dict (a JSON object), not %s" % (where, type(data).__name__))
    return json.dumps(data, default=str, separators=(",", ":"))


def _list(value: Optional[Iterable[str]]) -> Optional[list]:
    return None if value is None else [str(v) for v in value]


_EMIT = ("SELECT outbox.emit(%(topic)s, CAST(%(payload)s AS jsonb), CAST(%(users)s AS text[]), "
         "CAST(%(roles)s AS text[]), %(traceparent)s)")


def emit(db: Any, topic: str, data: dict, users: Optional[Iterable[str]] = None,
         roles: Optional[Iterable[str]] = None, traceparent: Optional[str] = None,
         broadcast: bool = False) -> int:
    """Insert one event in db's transaction and return its id.

    A bad topic or payload fails here, inside your transaction, with the name
    of the constraint it broke (e.g. events_topic_format_check)."""
    check_targets("emit", users, roles, broadcast)
    rows = execute(db, _EMIT, {
        "topic": topic, "payload": _payload("emit", data),
        "users": _list(users), "roles": _list(roles),
        "traceparent": traceparent or current_traceparent(),
    })
    return int(rows[0][0])


_EMIT_BATCH = ("SELECT id FROM outbox.emit_batch(CAST(%(topics)s AS text[]), CAST(%(payloads)s AS jsonb[]), "
               "CAST(%(users)s AS jsonb[]), CAST(%(roles)s AS jsonb[]), CAST(%(traceparents)s AS text[])) AS ins(id)")


def emit_batch(db: Any, events: Iterable[Event]) -> list:
    """Insert several events in one statement, in the order given (their
    seqs follow it), and return their ids. Each event's targets are checked
    as emit's; one bad event refuses them all."""
    evs = list(events)
    if not evs:
        return []
    tp = current_traceparent()
    topics, payloads, users, roles, tps = [], [], [], [], []
    for i, ev in enumerate(evs):
        where = "emit_batch[%d]" % i
        check_targets(where, ev.users, ev.roles, ev.broadcast)
        topics.append(ev.topic)
        payloads.append(_payload(where, ev.data))
        users.append(None if ev.users is None else json.dumps(_list(ev.users)))
        roles.append(None if ev.roles is None else json.dumps(_list(ev.roles)))
        tps.append(ev.traceparent or tp)
    rows = execute(db, _EMIT_BATCH, {"topics": topics, "payloads": payloads, "users": users,
                                     "roles": roles, "traceparents": tps})
    return [int(r[0]) for r in rows]


def disconnect(db: Any, users: Iterable[str], reason: str = "revoked") -> None:
    """Close every live session of these users (WebSocket code 4003 with
    reason) once they have every event committed before this transaction,
    on every outboxd replica, and refuse the tokens they held. Call it in the
    transaction that changes their permissions: the cut happens if and only
    if the change commits; the browser then asks the app for a new token."""
    if isinstance(users, (str, bytes)):
        raise ValueError("disconnect: users must be a list of strings, not the string %r" % (users,))
    us = _list(users) or []
    if not us:
        raise ValueError("disconnect: users must not be empty")
    execute(db, "SELECT outbox.disconnect(CAST(%(users)s AS text[]), %(reason)s)", {"users": us, "reason": reason})


def head(db: Any) -> int:
    """outbox.head(): the seq of the last event your snapshot can see."""
    return int(execute(db, "SELECT outbox.head()")[0][0])


def epoch(db: Any) -> str:
    """outbox.epoch(): the stream's identity; a restored or recreated
    database has another one."""
    return str(execute(db, "SELECT outbox.epoch()")[0][0])


def position(db: Any) -> Tuple[int, str]:
    """(head, epoch) in one statement: read them in the same REPEATABLE READ
    transaction as your state, and hand both to the client (since, epoch)."""
    row = execute(db, "SELECT outbox.head(), outbox.epoch()")[0]
    return int(row[0]), str(row[1])
