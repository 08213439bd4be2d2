"""SQLAlchemy integration (1.4 and 2.0): events declared on models, queued
in the unit of work, emitted at commit in the same transaction; and the
state-plus-position snapshot.

    from outboxd.orm import install_hooks, queue_event, track, snapshot

    # declare it on the model: changes of tracked rows become events,
    # emitted at commit in the same transaction, once per row and commit
    track(Task, "task_event", on=("insert", "update"), fields=("status",),
          roles=["LEVEL_1"], users=lambda task: [task.assignee])
    install_hooks(Session)

    # or queue one anywhere in the unit of work
    queue_event(session, "efectivo_event", {"efectivo_id": 7}, broadcast=True)
    session.commit()

    # a page's state and the stream position, without a race
    tasks, since, epoch = snapshot(engine, lambda conn: conn.execute(select(Task)).all())
"""
from __future__ import annotations

from typing import Any, Callable, Tuple, TypeVar

from sqlalchemy import event, inspect

from .producer import check_targets, current_traceparent, emit, position

__all__ = ["queue_event", "track", "install_hooks", "snapshot", "TrackSpec"]

T = TypeVar("T")
_QUEUE_KEY = "outboxd.events"


def snapshot(engine: Any, read: Callable[[Any], T]) -> Tuple[T, int, str]:
    """Run read(conn) and read the stream position in ONE REPEATABLE READ
    transaction: returns (read's result, since, epoch). A client that
    connects with since and epoch receives exactly the changes that state
    does not show yet — none twice, none lost."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            state = read(conn)
            since, ep = position(conn)
    return state, since, ep


def queue_event(session, topic, data, users=None, roles=None, broadcast=False):
    """Remember an event to emit at commit (see install_hooks). Targets as
    in emit(): broadcast=True, or users and/or roles.

    The session's transaction is begun here if it has not been yet, so that
    a rollback() that follows drops the event (with no transaction begun,
    SQLAlchemy's rollback() is a no-op that fires no event, and the event
    would leak into the next commit).
    """
    check_targets("queue_event", users, roles, broadcast)
    session.connection()
    tp = current_traceparent()  # the span current now
    session.info.setdefault(_QUEUE_KEY, []).append((topic, data, users, roles, tp, broadcast))


_TRACKED = []  # TrackSpec, in declaration order
_CHANGES_KEY = "outboxd.tracked"
_ACTIONS = {"insert": "created", "update": "updated", "delete": "deleted"}


class TrackSpec:
    def __init__(self, model, topic, on, fields, users, roles, payload, broadcast):
        unknown = set(on) - set(_ACTIONS)
        if unknown:
            raise ValueError("track: on must be among insert, update, delete; got %s" % sorted(unknown))
        check_targets("track(%s)" % model.__name__, users, roles, broadcast)
        self.model, self.topic, self.on = model, topic, tuple(on)
        self.fields = tuple(fields) if fields is not None else None
        self.users, self.roles, self.payload, self.broadcast = users, roles, payload, broadcast


def track(model, topic, on=("insert", "update"), fields=None, users=None, roles=None, payload=None, broadcast=False):
    """Declare that changes of `model` rows are events of `topic`.

    on:      which changes count: "insert", "update", "delete".
    fields:  for updates, only changes of these attributes count (default:
             any column); they are also the values an insert carries.
    users, roles: the targets, each a list or a callable(row) -> list. An
             empty list reaches nobody. A callable that returns None fails
             the commit (ValueError): return [] for nobody.
    broadcast: True (with no users and roles) sends every change to every
             client; without targets or it, track() refuses.
    payload: callable(row, action, changes) -> dict, action being "created",
             "updated" or "deleted" and changes {field: (old, new)}; by default
             {"action": "created"|"updated"|"deleted", "id": <primary key>,
              <field>: <value>…, "changes": {<field>: {"old", "new"}}}.

    The events are queued by an after_flush listener and emitted by
    install_hooks()'s before_commit hook, in the same transaction, once per
    row and commit (two flushes that change a row give one event, with the
    first old value and the last new one); a rollback drops them. Call
    install_hooks(YourSessionClass) once.
    """
    spec = TrackSpec(model, topic, on, fields, users, roles, payload, broadcast)
    _TRACKED.append(spec)
    return spec


def _changed_fields(obj, fields):
    """{field: (old, new)} for the attributes of obj changed in this flush."""
    state = inspect(obj)
    names = fields if fields is not None else [c.key for c in state.mapper.column_attrs]
    out = {}
    for name in names:
        hist = state.attrs[name].history
        if hist.has_changes():
            old = hist.deleted[0] if hist.deleted else None
            new = hist.added[0] if hist.added else None
            out[name] = (old, new)
    return out


def _collect(session, flush_context):
    pending = session.info.setdefault(_CHANGES_KEY, {})
    for spec in _TRACKED:
        for action, objs in (("insert", session.new), ("update", session.dirty), ("delete", session.deleted)):
            if action not in spec.on and not (action == "delete" and "insert" in spec.on):
                continue
            for obj in objs:
                if not isinstance(obj, spec.model):
                    continue
                key = (id(spec), id(obj))  # the same Python object for the whole transaction
                prev = pending.get(key)
                if action == "update":
                    changes = _changed_fields(obj, spec.fields)
                    if not changes:
                        continue  # untracked attributes only
                    if prev is not None:
                        if prev[0] == "update":  # keep the first old value
                            for name, (old, new) in changes.items():
                                changes[name] = (prev[2].get(name, (old, new))[0], new)
                            prev[2].update(changes)
                        continue  # created earlier in this transaction: still one "created"
                    pending[key] = ("update", obj, changes)
                elif action == "insert":
                    pending[key] = ("insert", obj, {})
                else:
                    if prev is not None and prev[0] == "insert":
                        del pending[key]  # created and deleted before commit: nothing happened
                    elif "delete" in spec.on:
                        pending[key] = ("delete", obj, {})
                    elif prev is not None:
                        del pending[key]


def _targets(spec, which, value, obj):
    if value is None:
        return None
    got = value(obj) if callable(value) else value
    if got is None:
        # A recipient lookup that found nothing: never everyone.
        raise ValueError("track(%s): the %s callback returned None for %r; return a list ([] reaches nobody), "
                         "or declare broadcast=True" % (spec.model.__name__, which, obj))
    return list(got)


def _default_payload(spec, obj, action, changes):
    state = inspect(obj)
    pk = state.mapper.primary_key_from_instance(obj)
    data = {"action": _ACTIONS[action], "id": pk[0] if len(pk) == 1 else list(pk)}
    if action == "insert":
        names = spec.fields if spec.fields is not None else [c.key for c in state.mapper.column_attrs]
        for name in names:
            data[name] = getattr(obj, name)
    if action == "update":
        data["changes"] = {name: {"old": old, "new": new} for name, (old, new) in changes.items()}
        for name, (_, new) in changes.items():
            data[name] = new
    return data


def _emit_tracked(session):
    pending = session.info.pop(_CHANGES_KEY, {})
    specs = {id(s): s for s in _TRACKED}
    for (spec_id, _), (action, obj, changes) in pending.items():
        spec = specs[spec_id]
        if spec.payload is not None:
            data = spec.payload(obj, _ACTIONS[action], changes)
        else:
            data = _default_payload(spec, obj, action, changes)
        emit(session, spec.topic, data, _targets(spec, "users", spec.users, obj), _targets(spec, "roles", spec.roles, obj),
             broadcast=spec.broadcast)


def install_hooks(session_class):
    """Emit queued and tracked events as the last statements of each commit."""

    @event.listens_for(session_class, "after_flush")
    def _track(session, flush_context):
        if _TRACKED:
            _collect(session, flush_context)

    @event.listens_for(session_class, "before_commit")
    def _emit_queued(session):
        # Flush FIRST: the model writes go out, and after_flush listeners get
        # their chance to queue events; only then are the queued events read.
        session.flush()
        _emit_tracked(session)
        queued = session.info.pop(_QUEUE_KEY, [])
        for topic, data, users, roles, tp, broadcast in queued:
            emit(session, topic, data, users, roles, traceparent=tp, broadcast=broadcast)

    @event.listens_for(session_class, "after_rollback")
    def _drop_queued(session):
        session.info.pop(_QUEUE_KEY, None)
        session.info.pop(_CHANGES_KEY, None)
