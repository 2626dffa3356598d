"""Who may call: the one authentication of every ``/v1`` request, for Flask's gate and the front layer alike.

A request presents ``Authorization: Bearer sk_…``. Its route reads the key's row by the key's digest,
alone (``shared.apikeys.read_key``) or in the statement that also reads the route's data (the job of a
read or a trigger, the jobs page), and ``Access`` decides, in the contract's order (§1.5): an unknown,
malformed or revoked key is 401, a missing scope 403, a key over the per-key API rate limit 429.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from sqlalchemy.orm import Session

from shared import redis_keys
from shared.apikeys import Principal, key_digest, principal_from_row
from shared.errors import Forbidden, TooManyRequests, Unauthorized

MISSING_KEY = "Missing or malformed Authorization header; send 'Bearer sk_…'"
BAD_KEY = "Unknown, malformed or revoked API key"


def presented_digest(authorization: str) -> str:
    """The stored digest of the request's bearer key (the ``Authorization`` header's value); 401 without
    one, or with a token not even shaped like a key."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(MISSING_KEY)
    digest = key_digest(token)
    if digest is None:
        raise Unauthorized(BAD_KEY)
    return digest


@dataclass(frozen=True)
class Permit:
    """One request counted against its key's API rate limit: the window's counter (``None``: no limit),
    and the 429 to answer when the count is over the limit."""

    counter: str | None = None
    refusal: TooManyRequests | None = None


UNLIMITED = Permit()


class Access:
    """The key check, the scope check and the per-key API rate limit (``SLUICE_API_RATE_LIMIT``), once."""

    def __init__(self, rate_limit: tuple[int, int] | None, client: redis.Redis) -> None:
        self.rate_limit = rate_limit
        self._redis = client

    @staticmethod
    def identify(session: Session, key_row: Mapping[str, Any] | None, now: datetime) -> Principal:
        """The principal of the key's row (``shared.apikeys.KEY_FIELDS``, ``None`` when no key has the
        digest); 401 when unknown or revoked."""
        principal = principal_from_row(session, key_row, now)
        if principal is None:
            raise Unauthorized(BAD_KEY)
        return principal

    def permit(self, principal: Principal, scope: str | None, now: datetime) -> Permit:
        """403 without ``scope``; else the request counted against the rate limit, refused (``refusal``, to
        raise) when over it."""
        if scope is not None and not principal.has_scope(scope):
            raise Forbidden(f"missing scope {scope}")
        if self.rate_limit is None:
            return UNLIMITED
        count, window_secs = self.rate_limit
        epoch = int(now.timestamp())
        window_start = epoch - epoch % window_secs
        counter = redis_keys.api_rate(principal.key_id, window_start)
        pipe = self._redis.pipeline()
        pipe.incr(counter)
        pipe.expire(counter, window_secs + 1)
        used = pipe.execute()[0]
        if used <= count:
            return Permit(counter)
        message = f"API rate limit of {count} requests per {window_secs} s exceeded"
        return Permit(counter, TooManyRequests(window_start + window_secs - epoch or 1, message))

    def give_back(self, permit: Permit) -> None:
        """Uncount a request that was counted but is then handed on (the front layer declines it after its
        permit, refused or not, and Flask counts it again): each request counts once."""
        if permit.counter is not None:
            self._redis.decr(permit.counter)
