"""mint_token, snapshot and the FastAPI token route (called through ASGI)."""
import asyncio
import json
import time

import jwt
import pytest
from fastapi import FastAPI, HTTPException, Request
from sqlalchemy import text
from sqlalchemy.orm import Session

from outboxd import emit
from outboxd.fastapi import snapshot, ws_token_route
from outboxd.tokens import mint_token

SECRET = "tests-secret-0123456789"


def test_mint_token_claims():
    now = int(time.time())
    tok = mint_token(SECRET, "op1", ["LEVEL_1", "ADMIN"], ttl=60, issuer="gad", audience="ops", now=now)
    claims = jwt.decode(tok, SECRET, algorithms=["HS256"], audience="ops", issuer="gad")
    assert claims == {"sub": "op1", "roles": ["LEVEL_1", "ADMIN"], "iat": now, "exp": now + 60,
                      "iss": "gad", "aud": "ops"}
    for bad, match in (((SECRET, ""), "sub is required"), (("short", "u"), "at least 16"),
                       ((SECRET, "u", "ADMIN"), "not the string")):
        with pytest.raises(ValueError, match=match):
            mint_token(*bad)
    with pytest.raises(ValueError, match="ttl"):
        mint_token(SECRET, "u", ttl=0)


def test_snapshot_reads_state_and_position_together(engine):
    with Session(engine) as s, s.begin():
        s.execute(text("CREATE TABLE IF NOT EXISTS snap_items (id int PRIMARY KEY)"))

    def read(conn):
        rows = conn.execute(text("SELECT count(*) FROM snap_items")).scalar_one()
        # A change that commits meanwhile is in neither the state nor the position.
        with Session(engine) as other, other.begin():
            other.execute(text("INSERT INTO snap_items SELECT coalesce(max(id), 0) + 1 FROM snap_items"))
            marker["id"] = emit(other, "task_event", {"item": "new"}, users=[])
        return rows

    marker = {}

    state, since, ep = snapshot(engine, read)
    with engine.connect() as conn:
        now_rows = conn.execute(text("SELECT count(*) FROM snap_items")).scalar_one()
        after = conn.execute(text("SELECT seq IS NULL OR seq > :s FROM outbox.events WHERE id = :id"),
                             {"s": since, "id": marker["id"]}).scalar_one()
    assert now_rows == state + 1  # the state missed the row…
    assert after                  # …and its event lies after since: the client receives it
    assert isinstance(ep, str) and ep


def asgi_get(app, path, headers=()):
    """One GET through the ASGI app: (status, JSON body)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers], "server": ("test", 80),
             "client": ("127.0.0.1", 1)}
    out = {"status": None, "body": b""}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg):
        if msg["type"] == "http.response.start":
            out["status"] = msg["status"]
        elif msg["type"] == "http.response.body":
            out["body"] += msg.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return out["status"], json.loads(out["body"] or b"null")


def test_ws_token_route():
    app = FastAPI()

    def identity(request: Request):
        user = request.headers.get("x-user")
        if not user:
            raise HTTPException(401, "log in first")
        return user, ["LEVEL_2"] if user == "sup1" else []

    ws_token_route(app, secret=SECRET, identity=identity, ttl=120)
    status, body = asgi_get(app, "/api/ws-token", [("X-User", "sup1")])
    assert status == 200 and body["expires_in"] == 120
    claims = jwt.decode(body["token"], SECRET, algorithms=["HS256"])
    assert claims["sub"] == "sup1" and claims["roles"] == ["LEVEL_2"]
    assert 110 <= claims["exp"] - time.time() <= 121
    status, _ = asgi_get(app, "/api/ws-token")
    assert status == 401
    with pytest.raises(ValueError, match="SECRET_KEY"):
        ws_token_route(app, secret="short", identity=identity)
