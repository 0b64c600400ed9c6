"""Per-user API tokens: HMAC-signed, expiring, stateless.

A user token lets an end user's client read that one user's data (profile, recommendations,
explanations, personalized search) and nothing else. It is minted with the server's
``PERSONA_API_TOKEN_SECRET`` (``persona user-token USER_ID``) and sent like a key (``X-API-Key``).

Format: ``pu1.<user id, base64url>.<expiry, unix seconds>.<HMAC-SHA256 of the first three parts, base64url>``.
The signature covers the version, the user and the expiry, so none can be changed; rotating the
secret revokes every token at once. No state is kept on the server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

__all__ = ["TOKEN_PREFIX", "TokenError", "mint_user_token", "verify_user_token"]

TOKEN_PREFIX = "pu1."
MAX_TTL_S = 366 * 24 * 3600


class TokenError(ValueError):
    """A token that is malformed, forged or expired (the message is safe to show the caller)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, body: str) -> str:
    return _b64(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest())


def mint_user_token(secret: str, user_id: str, ttl_s: int = 3600, now: float | None = None) -> str:
    """A token for ``user_id`` valid for ``ttl_s`` seconds (at most a year)."""
    if not secret:
        raise ValueError("no token secret: set PERSONA_API_TOKEN_SECRET")
    if not user_id or len(user_id) > 200:
        raise ValueError("a user id of 1 to 200 characters is needed")
    if not 1 <= ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl must be between 1 and {MAX_TTL_S} seconds")
    exp = int((time.time() if now is None else now) + ttl_s)
    body = f"{TOKEN_PREFIX}{_b64(user_id.encode())}.{exp}"
    return f"{body}.{_sign(secret, body)}"


def verify_user_token(secret: str, token: str, now: float | None = None) -> str:
    """The user id a valid token was minted for; :class:`TokenError` when malformed, forged or expired."""
    parts = token.split(".")
    if len(parts) != 4 or f"{parts[0]}." != TOKEN_PREFIX or not parts[2].isdigit() or len(token) > 600:
        raise TokenError("malformed user token")
    body = ".".join(parts[:3])
    if not hmac.compare_digest(_sign(secret, body).encode(), parts[3].encode()):
        raise TokenError("invalid user token")
    if int(parts[2]) <= (time.time() if now is None else now):
        raise TokenError("expired user token")
    try:
        user = _unb64(parts[1]).decode("utf-8")
    except (ValueError, UnicodeDecodeError) as e:  # signed by us, so not expected; refuse all the same
        raise TokenError("malformed user token") from e
    if not user:
        raise TokenError("malformed user token")
    return user
