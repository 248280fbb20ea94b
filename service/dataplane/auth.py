"""Who may call: the one authentication rule, for HTTP and gRPC alike. Each front end hands over
the `Authorization` value it received (an HTTP header, gRPC metadata) with the scope its route or
method needs, and maps the typed errors to its protocol (401 / UNAUTHENTICATED for a missing or
unknown key, 403 / PERMISSION_DENIED for a known key of the wrong scope).

Two scopes, each with any number of keys (comma-separated settings, so a new key can be added
beside the old one and the old one removed later, without a moment in which neither works):

- `INFERENCE` (API_KEY): inference, metadata, configs, statistics, the repository index.
- `ADMIN` (ADMIN_API_KEY): repository control, loading (with config overrides) and unloading.
  An admin key may also do everything an inference key may.

Unset API_KEY: the inference scope is open. Unset ADMIN_API_KEY: the admin scope takes the
API_KEY keys (as before scopes existed; `KeyRing.warning` says so once at start-up). Both unset:
no authentication at all. Keys are compared as SHA-256 digests with `hmac.compare_digest`,
against every key of the ring, so neither a key's content nor its length nor which key matched
shows in the time an answer takes.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
from dataclasses import dataclass

from service.errors import Forbidden, Unauthorized


class Scope(enum.Enum):
    INFERENCE = "inference"
    ADMIN = "admin"


def split_keys(value: str | None) -> tuple[str, ...]:
    """A comma-separated setting as its keys (blanks around and between them dropped)."""
    return tuple(k.strip() for k in (value or "").split(",") if k.strip())


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class KeyRing:
    """The keys of both scopes, as digests."""

    inference: tuple[bytes, ...]
    admin: tuple[bytes, ...]
    admin_from_api_key: bool  # ADMIN_API_KEY unset: the admin scope takes the API_KEY keys

    @staticmethod
    @functools.lru_cache(maxsize=16)
    def of(api_key: str | None, admin_api_key: str | None) -> KeyRing:
        """The ring of two settings' values (cached: the front ends ask per request)."""
        inference = tuple(_digest(k) for k in split_keys(api_key))
        admin = tuple(_digest(k) for k in split_keys(admin_api_key))
        fallback = not admin and bool(inference)
        return KeyRing(inference, inference if fallback else admin, fallback)

    @property
    def enabled(self) -> bool:
        """Any key at all: without one, nothing is read off a request."""
        return bool(self.inference or self.admin)

    def needs_key(self, scope: Scope) -> bool:
        return bool(self.inference if scope is Scope.INFERENCE else self.admin)

    @property
    def warning(self) -> str | None:
        """The start-up line for a deployment whose inference keys may also control models."""
        if not self.admin_from_api_key:
            return None
        return (
            "ADMIN_API_KEY is not set: the API_KEY keys may also load and unload models "
            "(set ADMIN_API_KEY to keep repository control apart)"
        )

    def check(self, scope: Scope, authorization: str) -> None:
        """`Authorization: Bearer <key>` with a key of `scope` (or an admin key), where that
        scope has keys. Unauthorized: no bearer token, or a key of neither scope; Forbidden: a
        key of the other scope."""
        if not self.needs_key(scope):
            return
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            admin = scope is Scope.ADMIN and not self.admin_from_api_key
            setting = "ADMIN_API_KEY" if admin else "API_KEY"
            raise Unauthorized(f"missing bearer token: send 'Authorization: Bearer <{setting}>'")
        digest = _digest(token)
        # Every key is compared (no early exit): the time does not tell which one matched.
        is_admin = _matches(digest, self.admin)
        is_inference = _matches(digest, self.inference)
        if is_admin or (scope is Scope.INFERENCE and is_inference):
            return
        if is_inference:
            raise Forbidden(
                "this API key may run inference but not control the model repository: "
                "loading and unloading models needs an admin key (ADMIN_API_KEY)"
            )
        raise Unauthorized("invalid API key")


def _matches(digest: bytes, keys: tuple[bytes, ...]) -> bool:
    found = False
    for key in keys:
        found |= hmac.compare_digest(digest, key)
    return found
