"""outboxd for Python: write events in the transaction of the change they
describe, and consume the stream they become.

    from outboxd import emit, disconnect, position

    with Session(engine) as session, session.begin():    # or a psycopg2 connection
        task.status = "done"
        session.flush()
        emit(session, "task_event", {"task_id": task.id, "status": "done"}, roles=["LEVEL_1"])

The parts that need more than a DB-API connection import it on use:
outboxd.orm (SQLAlchemy: track, install_hooks, queue_event, snapshot),
outboxd.tokens (PyJWT: mint_token), outboxd.fastapi (ws_token_route),
outboxd.consumer (websockets: Consumer; also ``python3 -m outboxd tail``).
"""
from .producer import (Event, current_traceparent, disconnect, emit, emit_batch, epoch, head, position,
                       set_traceparent_func)

__version__ = "0.2.0"

__all__ = ["Event", "emit", "emit_batch", "disconnect", "head", "epoch", "position",
           "set_traceparent_func", "current_traceparent", "__version__"]
