"""Tokens for outboxd, signed with the key it trusts (its SECRET_KEY,
HS256). With an identity provider outboxd reads JWKS_URL instead, and your
app hands out the provider's access tokens: this module is not needed."""
from __future__ import annotations

import time
from typing import Iterable, Optional

__all__ = ["mint_token", "DEVELOPMENT_SECRET"]

# outboxd's built-in development key (ENVIRONMENT=development without
# SECRET_KEY). Public: never in production.
DEVELOPMENT_SECRET = "outboxd-development-secret-change-me"


def mint_token(secret: str, sub: str, roles: Iterable[str] = (), *, ttl: int = 300,
               issuer: Optional[str] = None, audience: Optional[str] = None,
               now: Optional[int] = None) -> str:
    """A token for user sub with roles, valid ttl seconds (short: the
    browser client refreshes it in band before it expires). issuer and
    audience: when outboxd sets JWT_ISSUER / JWT_AUDIENCE."""
    import jwt  # PyJWT (python3-jwt)

    if not sub:
        raise ValueError("mint_token: sub is required")
    if isinstance(roles, (str, bytes)):
        raise ValueError("mint_token: roles must be a list of strings, not the string %r" % (roles,))
    if len(secret) < 16:
        raise ValueError("mint_token: the secret must be at least 16 bytes (outboxd refuses shorter keys)")
    if ttl <= 0:
        raise ValueError("mint_token: ttl must be positive")
    issued = int(time.time()) if now is None else now
    claims = {"sub": sub, "roles": [str(r) for r in roles], "iat": issued, "exp": issued + ttl}
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    token = jwt.encode(claims, secret, algorithm="HS256")
    return token if isinstance(token, str) else token.decode()
