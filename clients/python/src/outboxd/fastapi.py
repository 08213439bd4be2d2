"""FastAPI helpers: the token endpoint the browser client's getToken calls,
and the state-plus-position snapshot its first render needs.

    from outboxd.fastapi import snapshot, ws_token_route

    ws_token_route(app, secret=SECRET_KEY, identity=lambda user=Depends(current_user): (user.id, [user.role]))

    @app.get("/api/state")
    def state():
        tasks, since, epoch = snapshot(engine, read_tasks)
        return {"tasks": tasks, "since": since, "epoch": epoch}
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Tuple

from .orm import snapshot
from .tokens import mint_token

__all__ = ["ws_token_route", "snapshot"]


def ws_token_route(router: Any, *, secret: str, identity: Callable[..., Tuple[str, Iterable[str]]],
                   path: str = "/api/ws-token", ttl: int = 300, issuer: Optional[str] = None,
                   audience: Optional[str] = None) -> Callable[..., dict]:
    """Register GET path on router (a FastAPI app or APIRouter): it answers
    {"token", "expires_in"} for the caller, whom identity — a FastAPI
    dependency returning (sub, roles), raising 401 when nobody is logged
    in — names. Roles are read per request: the page asks again after 4001
    and 4003, and gets the roles the database holds now."""
    from fastapi import Depends

    if not secret or len(secret) < 16:
        raise ValueError("ws_token_route: secret must be outboxd's SECRET_KEY (at least 16 bytes)")
    if ttl <= 0:
        raise ValueError("ws_token_route: ttl must be positive")

    def ws_token(who: Tuple[str, Iterable[str]] = Depends(identity)) -> dict:
        sub, roles = who
        return {"token": mint_token(secret, sub, list(roles), ttl=ttl, issuer=issuer, audience=audience),
                "expires_in": ttl}

    router.get(path)(ws_token)
    return ws_token
