"""`CoordConvClient` (sync) and `AsyncCoordConvClient`: render and locate over HTTP with retries.

Retries (one tenacity policy, `_Base._policy`, for both clients) use exponential backoff with
full jitter, on connection errors, timeouts, 429 and 503
(honouring `Retry-After`) and other 5xx; a 4xx answer is final and raised as `ClientError`.
A request is retried `retries` times, and beyond that until the service has been failing for
`retry_window` seconds (default 120 s: longer than a server's drain and restart), so a service
that says "retry after" is waited for. The outage is one clock for all of a client's requests:
it starts at the first failed attempt and stops at the next answer, and a request that starts
when it has already lasted the window makes one attempt, without retries, so a job whose service
went away for good ends within about one window, not one window per request. That applies only
to a service that has answered this client before: an address that was never reached
(connection refused, no such host, a connect timeout) raises `Unreachable` at once, as there is
nothing to wait for.
The URL needs its scheme (`http://` or `https://`); one without is a ValueError, never guessed.
Arrays travel as NPY both ways, the cheapest encoding for the service.
"""

from __future__ import annotations

import io
import os
import random
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception_type

NPY = "application/x-npy"
DEFAULT_URL = "http://127.0.0.1:8000"
# The first contact (`probe`): a service that has not answered by then is taken as not there.
DEFAULT_FIRST_CONTACT_S = 10.0


class ClientError(Exception):
    """A request that failed for good: `status` is the HTTP status (0 without an answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message


class Unreachable(ClientError):
    """The service was never reached: nothing was sent, and no retry would help."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(0, f"cannot reach the service at {url} ({reason})")
        self.url = url
        self.reason = reason


class _Again(Exception):
    """An attempt that failed in a way a retry may mend: why, and the server's Retry-After."""

    def __init__(self, reason: str, retry_after: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _again(state: RetryCallState) -> _Again:
    error = state.outcome.exception() if state.outcome is not None else None
    assert isinstance(error, _Again)
    return error


# Errors of a first contact that mean nothing listens there (or no such host).
_NEVER_REACHED = (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol)


def check_url(url: str) -> str:
    """`url` without a trailing slash, or ValueError with one line saying what is wrong."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"{url!r} is not a URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        if "://" not in url:
            raise ValueError(f"{url!r} has no scheme; write it as http://{url} (or https://)")
        raise ValueError(f"{url!r}: expected an http:// or https:// URL with a host")
    return url.rstrip("/")


# Answers that no retry and no smaller batch can fix: the whole job stops with one message.
FATAL = {401, 403, 404, 405, 406, 415}
DEFAULT_RETRY_WINDOW = 120.0


def retryable(status: int) -> bool:
    return status == 429 or status >= 500


def backoff(attempt: int, retry_after: str | None, base: float = 0.2, cap: float = 10.0) -> float:
    """Seconds to wait before retry `attempt` (1, 2, ...): Retry-After if the server sent one,
    else exponential backoff with full jitter."""
    if retry_after:
        try:
            return min(max(float(retry_after), 0.0), 60.0)
        except ValueError:
            pass
    return random.uniform(0, min(cap, base * 2**attempt))


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict):
            return str(body.get("detail") or body.get("error") or body)
    except ValueError:
        pass
    return response.text[:200] or response.reason_phrase


def _reason(error: Exception) -> str:
    """Why a first contact failed, in a few words: the operating system's reason at the root of
    the chain (httpx -> httpcore -> anyio -> OSError), else httpx's message."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve the host name: {cause.strerror or cause}"
        if isinstance(cause, ssl.SSLError):  # an OSError whose errno is not the reason
            why = getattr(cause, "verify_message", None) or cause.reason or cause
            return f"TLS handshake failed: {why}"
        if isinstance(cause, OSError) and isinstance(cause.errno, int) and cause.errno > 0:
            return os.strerror(cause.errno).lower()
        cause = cause.__cause__ or cause.__context__
    if isinstance(error, httpx.ConnectTimeout):
        return "no answer to connecting"
    if isinstance(error, httpx.TimeoutException):
        return "connected, but no answer"
    return (str(error).strip() or type(error).__name__).splitlines()[0]


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def _load_npy(response: httpx.Response) -> np.ndarray:
    return np.load(io.BytesIO(response.content), allow_pickle=False)


def located(response: httpx.Response) -> np.ndarray:
    """A /v1/locate JSON answer as rows (x, y, confidence, ok): confidence and ok are NaN when
    the model answers none (version 1 models)."""
    body = response.json()
    coords = np.asarray(body["coords"], dtype=np.float64).reshape(-1, 2)
    rows = np.full((len(coords), 4), np.nan)
    rows[:, :2] = coords
    if "confidence" in body:
        rows[:, 2] = body["confidence"]
        rows[:, 3] = np.asarray(body["ok"], dtype=bool)
    return rows


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _render_request(coords: Any, model: str, version: str | None = None) -> dict[str, Any]:
    pts = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    body: dict[str, Any] = {"coords": pts.tolist(), "model": model}
    if version is not None:
        body["version"] = version
    return {"json": body, "headers": {"Accept": NPY}}


def _locate_request(images: Any, model: str, version: str | None = None) -> dict[str, Any]:
    params = {"model": model} if version is None else {"model": model, "version": version}
    if isinstance(images, list) and images and isinstance(images[0], bytes):
        files = [("images", (f"{i}.png", png, "image/png")) for i, png in enumerate(images)]
        return {"files": files, "params": params, "headers": {"Accept": NPY}}
    arr = np.asarray(images, dtype=np.float32)
    return {
        "content": _npy(arr),
        "params": params,
        "headers": {"Content-Type": NPY, "Accept": NPY},
    }


class _Base:
    def __init__(
        self,
        url: str | None,
        api_key: str | None,
        timeout: float,
        retries: int,
        retry_window: float = DEFAULT_RETRY_WINDOW,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if not retry_window >= 0:
            raise ValueError(f"retry_window must be >= 0 seconds, got {retry_window}")
        self.url = check_url(url or os.environ.get("COORDCONV_URL") or DEFAULT_URL)
        self.api_key = api_key if api_key is not None else os.environ.get("COORDCONV_API_KEY")
        self.timeout = timeout
        self.retries = retries
        self.retry_window = retry_window
        self.on_retry: Callable[[int, str], None] | None = None  # (attempt, reason) hook
        self.answered = False  # has the service ever answered? (then errors are waited out)
        # When the current outage began: the first failed attempt since the last answer (200 or
        # a final 4xx), shared by every request of this client; None while the service answers.
        self.failing_since: float | None = None

    def _probed(self, error: httpx.TransportError | None, within: float) -> None:
        if error is not None:
            reason = _reason(error)
            if isinstance(error, httpx.TimeoutException):
                reason = f"{reason} within {within:g} s"
            raise Unreachable(self.url, reason)
        self.answered = True

    def _answer(
        self, response: httpx.Response | None, error: httpx.TransportError | None
    ) -> httpx.Response:
        """An attempt's outcome: the answer (200); ClientError for a 4xx, Unreachable for an
        address never reached, both final; `_Again` for what a retry may mend."""
        if response is not None:
            self.answered = True
            if response.status_code == 200:
                self.failing_since = None
                return response
            if not retryable(response.status_code):
                self.failing_since = None
                raise ClientError(response.status_code, _error_message(response))
            self._failing()
            reason = f"HTTP {response.status_code}: {_error_message(response)}"
            raise _Again(reason, response.headers.get("retry-after"))
        if not self.answered and isinstance(error, _NEVER_REACHED):
            raise Unreachable(self.url, _reason(error))
        self._failing()
        raise _Again(f"{type(error).__name__}: {error}")

    def _failing(self) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()

    def outage_seconds(self) -> float:
        """How long the service has been failing every attempt (0 while it answers)."""
        return 0.0 if self.failing_since is None else time.monotonic() - self.failing_since

    def _policy(self) -> dict[str, Any]:
        """The retry policy of both clients: attempt after attempt while `retries` are left or
        the outage (or this request's own failures) has not lasted `retry_window`, each wait
        `backoff` (Retry-After honoured); one attempt alone for a request started when the
        outage had already lasted the window; then ClientError saying how many attempts, for
        how long, and why."""

        def failing_for(state: RetryCallState) -> float:
            """The longer of the outage and this request's own failures (one request a server
            keeps failing while it answers others is bounded as well)."""
            return max(self.outage_seconds(), state.seconds_since_start or 0.0)

        def stop(state: RetryCallState) -> bool:
            began = self.failing_since
            if began is not None and began + self.retry_window <= state.start_time:
                return True  # the outage had lasted the window when this request started
            spent = state.attempt_number > self.retries
            return spent and failing_for(state) >= self.retry_window

        def before_sleep(state: RetryCallState) -> None:
            if self.on_retry:
                self.on_retry(state.attempt_number, _again(state).reason)

        def give_up(state: RetryCallState) -> None:
            n = state.attempt_number
            raise ClientError(
                0,
                f"gave up after {n} attempt{'s' if n > 1 else ''} ({failing_for(state):.0f} s "
                f"of failures): {_again(state).reason}",
            )

        return {
            "retry": retry_if_exception_type(_Again),
            "stop": stop,
            "wait": lambda state: backoff(state.attempt_number, _again(state).retry_after),
            "before_sleep": before_sleep,
            "retry_error_callback": give_up,
        }


class CoordConvClient(_Base):
    """Synchronous client. `render(coords)` -> (N, 64, 64); `locate(images)` -> (N, 2)."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 5,
        retry_window: float = DEFAULT_RETRY_WINDOW,
    ) -> None:
        super().__init__(url, api_key, timeout, retries, retry_window)
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout, headers=_headers(self.api_key)
        )

    def __enter__(self) -> CoordConvClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = Retrying(**self._policy())(self._attempt, path, kwargs)
        return response

    def _attempt(self, path: str, kwargs: dict[str, Any]) -> httpx.Response:
        try:
            response = self._http.post(path, **kwargs)
        except httpx.TransportError as exc:
            return self._answer(None, exc)
        return self._answer(response, None)

    def probe(self, within: float = DEFAULT_FIRST_CONTACT_S) -> None:
        """The first contact: the service answers `GET /healthz` (whatever it says) within
        `within` seconds, or Unreachable (connection refused, no such host, or connected and
        never answered)."""
        error = None
        try:
            self._http.get("/healthz", timeout=within)
        except httpx.TransportError as exc:
            error = exc
        self._probed(error, within)

    def render(self, coords: Any, model: str = "render", version: str | None = None) -> np.ndarray:
        return _load_npy(self._post("/v1/render", **_render_request(coords, model, version)))

    def locate(self, images: Any, model: str = "locate", version: str | None = None) -> np.ndarray:
        """images: an (N, 64, 64) array in [0, 1], or a list of PNG bytes."""
        return _load_npy(self._post("/v1/locate", **_locate_request(images, model, version)))

    def locate_rows(
        self, images: Any, model: str = "locate", version: str | None = None
    ) -> np.ndarray:
        """Like `locate`, with each point's confidence and verdict: (N, 4) x, y, confidence,
        ok (NaN for models without a confidence)."""
        request = _locate_request(images, model, version)
        request["headers"] = {**request["headers"], "Accept": "application/json"}
        return located(self._post("/v1/locate", **request))

    def models(self) -> list[dict[str, Any]]:
        r = self._http.get("/v1/models")
        if r.status_code != 200:
            raise ClientError(r.status_code, _error_message(r))
        return list(r.json()["models"])


class AsyncCoordConvClient(_Base):
    """The asyncio twin of `CoordConvClient`, for many requests in flight."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 5,
        max_connections: int = 16,
        retry_window: float = DEFAULT_RETRY_WINDOW,
    ) -> None:
        super().__init__(url, api_key, timeout, retries, retry_window)
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=timeout,
            headers=_headers(self.api_key),
            limits=httpx.Limits(max_connections=max_connections),
        )

    async def __aenter__(self) -> AsyncCoordConvClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _post(self, path: str, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = await AsyncRetrying(**self._policy())(
            self._attempt, path, kwargs
        )
        return response

    async def _attempt(self, path: str, kwargs: dict[str, Any]) -> httpx.Response:
        try:
            response = await self._http.post(path, **kwargs)
        except httpx.TransportError as exc:
            return self._answer(None, exc)
        return self._answer(response, None)

    async def probe(self, within: float = DEFAULT_FIRST_CONTACT_S) -> None:
        """`CoordConvClient.probe`, awaited."""
        error = None
        try:
            await self._http.get("/healthz", timeout=within)
        except httpx.TransportError as exc:
            error = exc
        self._probed(error, within)

    async def render(
        self, coords: Any, model: str = "render", version: str | None = None
    ) -> np.ndarray:
        request = _render_request(coords, model, version)
        return _load_npy(await self._post("/v1/render", **request))

    async def locate(
        self, images: Any, model: str = "locate", version: str | None = None
    ) -> np.ndarray:
        request = _locate_request(images, model, version)
        return _load_npy(await self._post("/v1/locate", **request))

    async def locate_rows(
        self, images: Any, model: str = "locate", version: str | None = None
    ) -> np.ndarray:
        request = _locate_request(images, model, version)
        request["headers"] = {**request["headers"], "Accept": "application/json"}
        return located(await self._post("/v1/locate", **request))

    async def models(self) -> list[dict[str, Any]]:
        r = await self._http.get("/v1/models")
        if r.status_code != 200:
            raise ClientError(r.status_code, _error_message(r))
        return list(r.json()["models"])
