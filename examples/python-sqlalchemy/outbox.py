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
    queue_event(session, "efectivo_event", {"efectivo_id": 7, "disponible": False}, broadcast=True)
    session.commit()

    # 3. declare it on the model: changes of tracked rows become events,
    #    emitted at commit in the same transaction, once per row and commit
    track(Task, "task_event", on=("insert", "update"), fields=("status",),
          roles=["LEVEL_1"], users=lambda task: [task.assignee])
    install_hooks(Session)
"""
import json

from sqlalchemy import event, inspect, text

_EMIT = text(
    "SELECT outbox.emit(:topic, CAST(:payload AS jsonb), CAST(:users AS text[]), "
    "CAST(:roles AS text[]), :traceparent)"
)
_QUEUE_KEY = "outboxd.events"
_traceparent_func = None


def set_traceparent_func(fn):
    """Install a function returning the current span's W3C traceparent (or
    None); emit() stores it with each event, and outboxd's consumer span
    links to it. tracing.current_traceparent is one; with opentelemetry-api,
    one built on its propagator."""
    global _traceparent_func
    _traceparent_func = fn


def _check_targets(where, users, roles, broadcast):
    """Broadcasting is explicit: no targets at all is a mistake (a
    forgotten argument, a callback that returned None), never everyone."""
    if broadcast:
        if users is not None or roles is not None:
            raise ValueError("%s: broadcast=True sends to everyone; give it without users and roles" % where)
    elif users is None and roles is None:
        raise ValueError("%s: no targets: give users and/or roles (an empty list reaches nobody), "
                         "or broadcast=True to send to every client" % where)


def emit(session, topic, data, users=None, roles=None, traceparent=None, broadcast=False):
    """Insert one event through the session's connection and return its id.

    users: JWT "sub" values; roles: role names. A union. An empty list is an
    empty set (a recipient query that found nobody reaches nobody).
    broadcast=True, with neither users nor roles, sends to every client;
    no targets without it is refused (ValueError).
    A bad topic or payload fails here, inside your transaction, with the name
    of the constraint it broke (e.g. events_topic_format_check).
    """
    _check_targets("emit", users, roles, broadcast)
    return session.execute(
        _EMIT,
        {
            "topic": topic,
            "payload": json.dumps(data, default=str),
            "users": None if users is None else list(users),
            "roles": None if roles is None else list(roles),
            "traceparent": traceparent or (_traceparent_func() if _traceparent_func else None),
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


def queue_event(session, topic, data, users=None, roles=None, broadcast=False):
    """Remember an event to emit at commit (see install_hooks). Targets as
    in emit(): broadcast=True, or users and/or roles.

    The session's transaction is begun here if it has not been yet, so that
    a rollback() that follows drops the event (with no transaction begun,
    SQLAlchemy's rollback() is a no-op that fires no event, and the event
    would leak into the next commit).
    """
    _check_targets("queue_event", users, roles, broadcast)
    session.connection()
    tp = _traceparent_func() if _traceparent_func else None  # the span current now
    session.info.setdefault(_QUEUE_KEY, []).append((topic, data, users, roles, tp, broadcast))


_TRACKED = []  # TrackSpec, in declaration order
_CHANGES_KEY = "outboxd.tracked"
_ACTIONS = {"insert": "created", "update": "updated", "delete": "deleted"}


class TrackSpec:
    def __init__(self, model, topic, on, fields, users, roles, payload, broadcast):
        unknown = set(on) - set(_ACTIONS)
        if unknown:
            raise ValueError("track: on must be among insert, update, delete; got %s" % sorted(unknown))
        _check_targets("track(%s)" % model.__name__, users, roles, broadcast)
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
