"""Who may call: the one authentication rule, for HTTP and gRPC alike. Each front end hands over
the `Authorization` value it received (an HTTP header, gRPC metadata) and maps the typed error
to its protocol (401, UNAUTHENTICATED)."""

from __future__ import annotations

import hmac

from service.errors import Unauthorized


def check_bearer(key: str | None, authorization: str) -> None:
    """`Authorization: Bearer <API_KEY>` when a key is set; compared in constant time."""
    if key is None:
        return
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <API_KEY>'")
    if not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise Unauthorized("invalid API key")
