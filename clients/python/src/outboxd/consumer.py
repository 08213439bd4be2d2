"""An asyncio consumer of outboxd's stream, for workers and scripts.

    from outboxd.consumer import Consumer

    consumer = Consumer("ws://127.0.0.1:8002/ws/connect", get_token=fetch_token,
                        since=saved_seq, epoch=saved_epoch, topics=["task_event"])
    async for ev in consumer:             # {"type", "seq", "id", "timestamp", "data"}
        handle(ev)
        save(consumer.last_seq, consumer.epoch)

Guarantees, with outboxd: after any disconnect it reconnects with
since=<last seq> and the stream's epoch, and yields exactly the events it
missed, in seq order, each once (deduplicated by seq). A restored or
recreated database answers resync_required (reason "epoch") instead of
replaying other events under the same seqs: on_resync is called, and live
events go on.

Tokens: get_token is called before every connection and before the token
expires (it is then handed over in band, {"type":"refresh"}: the session
goes on). 4001 asks it for a new token; a token that cannot be renewed (the
same one again) raises TokenRefused. 4003 (the app revoked the session:
outbox.disconnect) asks it too and raises Revoked if it returns None or the
revoked token again. A
handshake refused with 401/403 asks once more, then raises TokenRefused.
1001/1012 (the server restarting) and 4008 reconnect at once; anything else
with jittered exponential backoff, min_delay doubling to max_delay.

Needs Debian's python3-websockets (10.x or later).
"""
from __future__ import annotations

import asyncio
import base64
import inspect
import json
import random
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Optional, Union
from urllib.parse import urlencode, urlsplit, urlunsplit, parse_qsl

__all__ = ["Consumer", "TokenRefused", "Revoked", "token_exp"]

TokenSource = Callable[[], Union[Optional[str], Awaitable[Optional[str]]]]

_AT_ONCE = {1001, 1012, 4008}


class TokenRefused(Exception):
    """The server refused the token and get_token had no other."""


class Revoked(Exception):
    """The app revoked the session (4003) and get_token returned None."""

    def __init__(self, reason: str):
        super().__init__("session revoked by the app (4003: %s)" % reason)
        self.reason = reason


def token_exp(token: str) -> int:
    """A JWT's exp, unverified (0: none or unreadable); the server verifies."""
    try:
        part = token.split(".")[1]
        part += "=" * (-len(part) % 4)
        exp = json.loads(base64.urlsafe_b64decode(part)).get("exp")
        return int(exp) if isinstance(exp, (int, float)) else 0
    except (IndexError, ValueError, AttributeError):
        return 0


def _close_code(exc: Exception) -> tuple:
    """(code, reason) of a closed connection, across websockets versions."""
    rcvd = getattr(exc, "rcvd", None)
    if rcvd is not None:
        return rcvd.code, rcvd.reason
    return getattr(exc, "code", 1006), getattr(exc, "reason", "")


def _status(exc: Exception) -> Optional[int]:
    """The HTTP status of a refused handshake, across websockets versions."""
    code = getattr(exc, "status_code", None)
    if code is None and getattr(exc, "response", None) is not None:
        code = getattr(exc.response, "status_code", None)
    return code


class Consumer:
    def __init__(self, url: str, get_token: Union[str, TokenSource], *, since: Optional[int] = None,
                 epoch: Optional[str] = None, topics: Optional[List[str]] = None,
                 on_resync: Optional[Callable[[int, str], Any]] = None,
                 on_state: Optional[Callable[[str, Dict[str, Any]], Any]] = None,
                 min_delay: float = 0.5, max_delay: float = 5.0, refresh_before: float = 30.0,
                 open_timeout: float = 10.0) -> None:
        if not url.startswith(("ws://", "wss://")):
            raise ValueError("Consumer: url must be ws:// or wss:// (outboxd's /ws/connect), got %r" % url)
        if since is not None and since < 0:
            raise ValueError("Consumer: since must be >= 0 (None: live from the head)")
        self.url = url
        self._get_token: TokenSource = (lambda: get_token) if isinstance(get_token, str) else get_token
        self.last_seq: Optional[int] = since
        self.epoch: Optional[str] = epoch or None
        self.topics = list(topics) if topics is not None else None
        self.on_resync = on_resync
        self.on_state = on_state
        self.min_delay, self.max_delay = min_delay, max_delay
        self.refresh_before = refresh_before
        self.open_timeout = open_timeout
        self.connected = False  # connected at least once
        self.user: Optional[str] = None
        self.roles: List[str] = []
        self._stopped = False
        self._ws: Any = None
        self._refreshed: Optional[str] = None

    async def _token(self) -> Optional[str]:
        got = self._get_token()
        if inspect.isawaitable(got):
            got = await got
        return got or None

    def _connect_url(self) -> str:
        parts = urlsplit(self.url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("since", "epoch", "topics", "batch")]
        if self.last_seq is not None:
            query.append(("since", str(self.last_seq)))
            if self.epoch:
                query.append(("epoch", self.epoch))
        if self.topics is not None:
            query.append(("topics", ",".join(self.topics)))
        query.append(("batch", "1"))
        return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))

    def _state(self, state: str, **info: Any) -> None:
        if self.on_state:
            self.on_state(state, info)

    def close(self) -> None:
        """Stop: the iteration ends after the current frame."""
        self._stopped = True
        if self._ws is not None:
            asyncio.ensure_future(self._ws.close())

    async def run(self, handler: Callable[[Dict[str, Any]], Any]) -> None:
        """Call handler(event) for every event (awaited when it is a
        coroutine function), until close() or an error."""
        async for ev in self:
            got = handler(ev)
            if inspect.isawaitable(got):
                await got

    def __aiter__(self) -> AsyncIterator[Dict[str, Any]]:
        return self._events()

    async def _events(self) -> AsyncIterator[Dict[str, Any]]:
        import websockets

        attempt = 0
        token = await self._token()
        if token is None:
            raise TokenRefused("get_token returned no token")
        refused_once = False
        while not self._stopped:
            token = self._refreshed or token  # a token handed over in band outlives its session
            self._refreshed = None
            delay: Optional[float] = None
            self._state("connecting", since=self.last_seq, attempt=attempt)
            try:
                async with websockets.connect(
                        self._connect_url(), subprotocols=["outboxd.v1", "outboxd.token." + token],
                        open_timeout=self.open_timeout, max_size=None, ping_interval=20) as ws:
                    self._ws = ws
                    refused_once = False
                    refresher: Optional[asyncio.Task] = None
                    try:
                        async for frame in ws:
                            for line in (frame if isinstance(frame, str) else frame.decode()).split("\n"):
                                if not line:
                                    continue
                                msg = json.loads(line)
                                seq = msg.get("seq")
                                if isinstance(seq, int) and seq > 0:
                                    if self.last_seq is not None and seq <= self.last_seq:
                                        continue  # a duplicate: already yielded
                                    self.last_seq = seq
                                    yield msg
                                    if self._stopped:
                                        return
                                    continue
                                if msg.get("type") == "welcome":
                                    attempt = 0
                                    self.connected = True
                                    refresher = self._welcome(msg.get("data") or {}, ws, token, refresher)
                                elif msg.get("type") == "refreshed":
                                    pass
                                else:
                                    self._control(msg)
                    finally:
                        if refresher is not None:
                            refresher.cancel()
                        self._ws = None
                    code, reason = ws.close_code or 1006, ws.close_reason or ""
            except websockets.exceptions.ConnectionClosed as exc:
                code, reason = _close_code(exc)
            except (OSError, asyncio.TimeoutError, websockets.exceptions.InvalidHandshake) as exc:
                status = _status(exc)
                if status in (401, 403):
                    new = await self._token()
                    if new is None or (new == token and refused_once):
                        raise TokenRefused("outboxd refused the token (HTTP %d): %s" % (status, exc)) from None
                    refused_once, token = True, new
                    delay = 0
                code, reason = 0, str(exc) or type(exc).__name__
            if self._stopped:
                return
            if code == 4001:
                new = await self._token()
                if new is None or new == token:
                    raise TokenRefused("the token expired (4001) and get_token has no new one")
                token, delay = new, 0
            elif code == 4003:
                new = await self._token()
                if new is None or new == token:  # the revoked token itself is refused from now on
                    raise Revoked(reason)
                token, delay = new, 0
            elif code in _AT_ONCE and attempt == 0:
                delay = 0
            attempt += 1
            if delay is None:
                ceiling = min(self.max_delay, self.min_delay * 2 ** (attempt - 1))
                delay = ceiling / 2 + random.random() * ceiling / 2
            self._state("reconnecting", since=self.last_seq, epoch=self.epoch, code=code, reason=reason,
                        attempt=attempt, delay=delay)
            await asyncio.sleep(delay)

    def _welcome(self, data: Dict[str, Any], ws: Any, token: str,
                 refresher: Optional[asyncio.Task]) -> Optional[asyncio.Task]:
        # In another history the old seq means nothing: live from the head,
        # and resync_required (reason "epoch") follows.
        if self.last_seq is None or (self.epoch is not None and data.get("epoch") != self.epoch):
            self.last_seq = int(data.get("head_seq", 0))
        self.epoch = data.get("epoch") or None
        self.user, self.roles = data.get("user_id"), list(data.get("roles") or [])
        self._state("open", since=self.last_seq, epoch=self.epoch, user=self.user, roles=self.roles)
        if refresher is not None:
            refresher.cancel()
        if self.refresh_before <= 0:
            return None
        return asyncio.ensure_future(self._refresh(ws, token_exp(token)))

    async def _refresh(self, ws: Any, exp: int) -> None:
        """Before exp, a new token in band; the server answers refreshed with
        the new exp, or error (the session keeps the old token until 4001)."""
        while exp > 0:
            await asyncio.sleep(max(0.0, exp - time.time() - self.refresh_before))
            new = await self._token()
            next_exp = token_exp(new) if new else 0
            if not new or next_exp <= exp:
                return  # no newer token: 4001 at exp asks again
            await ws.send(json.dumps({"type": "refresh", "data": {"token": new}}))
            self._refreshed, exp = new, next_exp

    def _control(self, msg: Dict[str, Any]) -> None:
        if msg.get("type") == "resync_required":
            data = msg.get("data") or {}
            if self.on_resync:
                self.on_resync(int(data.get("oldest_seq", 0)), str(data.get("reason", "")))
