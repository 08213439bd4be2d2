#!/usr/bin/env python3
"""A task-management workload producing outboxd events from SQLAlchemy.

Each operation changes the model (tasks, personnel "efectivos") and emits the
matching event in the same transaction. Status changes of tasks are picked up
automatically by an after_flush listener, as the original system's
"event listeners de SQLAlchemy" did, but now transactionally: the events are
written by the before_commit hook, so a rollback loses nothing and invents
nothing.

    .venv/bin/python examples/python-sqlalchemy/producer.py --count 20

Needs: the outboxd package (clients/python) and Debian's python3-sqlalchemy
and python3-psycopg2 — scripts/python-venv.sh makes .venv with all of them.
Its tables are its own (sqla_tasks, sqla_efectivos): the Go producer's
demo_* tables have other columns.
"""
import argparse
import os
import random
import sys
import time

from sqlalchemy import (BigInteger, Boolean, Column, DateTime, Identity, String, create_engine, event, func, inspect,
                        select)
from sqlalchemy.orm import Session, declarative_base

import tracing
from outboxd import emit, set_traceparent_func
from outboxd.orm import install_hooks, queue_event

Base = declarative_base()


class Task(Base):
    __tablename__ = "sqla_tasks"
    id = Column(BigInteger, Identity(always=True), primary_key=True)
    title = Column(String, nullable=False)
    status = Column(String, nullable=False, default="pending")
    assignee = Column(String, nullable=False)
    updated_at = Column(DateTime(timezone=True), nullable=False, server_default=func.now())


class Efectivo(Base):
    __tablename__ = "sqla_efectivos"
    id = Column(BigInteger, primary_key=True)
    nombre = Column(String, nullable=False)
    disponible = Column(Boolean, nullable=False, default=True)


install_hooks(Session)
set_traceparent_func(tracing.current_traceparent)


def _task_status_listener(session, flush_context):
    """Queue a task_event for every task whose status changed in this flush."""
    for obj in session.dirty:
        if isinstance(obj, Task):
            hist = inspect(obj).attrs.status.history
            if hist.has_changes():
                queue_event(session, "task_event",
                            {"action": "status_changed", "task_id": obj.id, "status": obj.status,
                             "previous": hist.deleted[0] if hist.deleted else None},
                            users=[obj.assignee], roles=["LEVEL_1"])


event.listen(Session, "after_flush", _task_status_listener)

STATUSES = ["pending", "in_progress", "blocked", "done"]


def run(url, count, rate, users):
    engine = create_engine(url, future=True)
    Base.metadata.create_all(engine)
    with Session(engine) as s, s.begin():
        if s.scalar(select(func.count()).select_from(Efectivo)) == 0:
            s.add_all([Efectivo(id=i, nombre=f"Efectivo {i}") for i in range(1, 21)])
    rnd = random.Random(11)
    pause = 1.0 / rate if rate > 0 else 0
    for i in range(count):
        # One span per operation: the event's traceparent points at it.
        with tracing.span("demo operation"), Session(engine) as s, s.begin():
            kind = i % 4
            if kind == 0:
                assignee = f"u{rnd.randint(1, users)}"
                task = Task(title=f"Tarea {i}", assignee=assignee)
                s.add(task)
                s.flush()
                emit(s, "task_event", {"action": "created", "task_id": task.id, "assignee": assignee},
                     roles=["LEVEL_1"])
            elif kind == 1:
                task = s.scalars(select(Task).order_by(func.random()).limit(1)).first()
                if task is not None:
                    task.status = rnd.choice([st for st in STATUSES if st != task.status])
                    # the after_flush listener queues the task_event
                else:
                    emit(s, "system_event", {"message": "no tasks yet"}, broadcast=True)
            elif kind == 2:
                ef = s.get(Efectivo, rnd.randint(1, 20))
                ef.disponible = not ef.disponible
                s.flush()
                emit(s, "efectivo_event",
                     {"action": "availability_changed", "efectivo_id": ef.id, "disponible": ef.disponible},
                     broadcast=True)
            else:
                open_tasks = s.scalar(select(func.count()).select_from(Task).where(Task.status != "done"))
                emit(s, "dashboard_event", {"open_tasks": open_tasks}, roles=["admin"])
        if pause:
            time.sleep(pause)
    print(f"python-sqlalchemy producer: {count} operations committed", file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--database-url", default=os.environ.get(
        "DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--count", type=int, default=20, help="operations (each one transaction)")
    p.add_argument("--rate", type=float, default=5, help="operations per second (0: as fast as possible)")
    p.add_argument("--users", type=int, default=5)
    a = p.parse_args()
    url = a.database_url
    if url.startswith("postgres://"):  # SQLAlchemy wants postgresql://
        url = "postgresql://" + url[len("postgres://"):]
    run(url, a.count, a.rate, a.users)


if __name__ == "__main__":
    main()
