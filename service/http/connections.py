"""uvicorn's HTTP/1.1 protocol (httptools), hardened at the connection level, where the ASGI app
cannot see: what an idle, slow or hostile client does before its request reaches a route.

- Header timeout: a request's headers must arrive within HEADER_TIMEOUT_S of its first byte (of
  the connection, for the first request): else 408 and close. A connection that sends nothing is
  closed after the same time.
- Body timeout: while a body is being received, each chunk must follow the previous one within
  BODY_TIMEOUT_S: else 408 and close, and the route sees a disconnect (so a chunked body that
  never ends cannot hold a request slot).
- Header size: more than MAX_HEADER_BYTES before the headers end is 431 and close, counted as the
  bytes arrive (so a 200 MB header is never buffered).
- Send timeout: a client that does not read its answer for SEND_TIMEOUT_S is cut off, which frees
  the buffered response (clients that never read cannot grow the memory).
- Connection limit: at MAX_CONNECTIONS the longest-idle keep-alive connection is closed to make
  room (idle: between requests, with nothing received of the next one, nor waiting unread in
  the kernel); only when none is idle is the new connection answered 503 + Retry-After. Idle
  keep-alive connections are closed after KEEPALIVE_TIMEOUT_S (uvicorn's own timer).
- Shutdown: a connection with a request in progress finishes it and closes; an idle one lingers
  (up to a quarter of GRACE_S, at most 1 s) for a request its client may have sent already,
  answers it and closes, instead of being closed under it (a close that crosses a request in
  flight is a reset the client cannot tell from a failure; service/http/listeners.py does the
  same for the connections still in the listener's queue).
- Hang-ups: a client that goes away with answers pending (pipelined requests, or one still
  being computed) costs one DEBUG line. Every unfinished request on the connection is told it
  is disconnected (uvicorn tells only the last one parsed, so a pipelined request still running
  wrote to the closed transport, and uvloop raised: two tracebacks per connection).

The write coalescing (a response's head and the start of its body in one writev) is a separate
concern, in service/http/coalesce.py; `protocol_class` composes both into the class uvicorn is
given. Both subclass uvicorn's private HttpToolsProtocol: pyproject.toml pins uvicorn to the
releases they are tested against.

Requests are not limited here (uvicorn's `limit_concurrency` counts connections and answers a
bare text 503 on every route, health included): the app's middleware limits requests in flight,
never refusing health routes.
"""

from __future__ import annotations

import array
import asyncio
import logging
import time
from collections import deque
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from service.http.coalesce import CoalescingWrites
from service.memory import release_memory
from service.settings import Settings

log = logging.getLogger("coordconv.http")
STATUS = {
    408: b"408 Request Timeout",
    431: b"431 Request Header Fields Too Large",
    503: b"503 Service Unavailable",
}


def _raw_response(status: int, message: str, retry_after: int | None = None) -> bytes:
    body = orjson.dumps({"detail": message, "error": message})
    head = [
        b"HTTP/1.1 " + STATUS[status],
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
    ]
    if retry_after is not None:
        head.append(b"retry-after: " + str(retry_after).encode())
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def protocol_class(settings: Settings) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn's `http=` option, bound to these settings."""
    header_timeout = settings.header_timeout_s
    body_timeout = settings.body_timeout_s
    send_timeout = settings.send_timeout_s
    max_header = settings.max_header_bytes
    max_connections = settings.max_connections
    linger = min(1.0, settings.grace_s / 4)

    class GuardedHttpProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._timer: asyncio.TimerHandle | None = None
            self._send_timer: asyncio.TimerHandle | None = None
            self._in_headers = True  # between a request's first byte and its headers' end
            self._header_bytes = 0
            self._in_body = False
            self.last_active = time.monotonic()
            # This connection's requests whose answers are not complete yet, oldest first: the
            # one running and those pipelined behind it.
            self._unanswered: deque[RequestResponseCycle] = deque()
            self._peer_closed = False  # the client sent EOF: it went away
            self._closing = False  # the server is stopping: answer what comes, then close

        # Timers

        def _arm(self, seconds: float, status: int, message: str) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._expire, status, message)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expire(self, status: int, message: str) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            started = self.cycle is not None and self.cycle.response_started
            if self._header_bytes or self._in_body:
                if not started:
                    self.transport.write(_raw_response(status, message))
                log.info("closing a connection from %s: %s", _peer(self.client), message)
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.disconnected = True
                self.cycle.message_event.set()
            self.transport.close()

        # Connection

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections and not self._evict_idle():
                transport.write(
                    _raw_response(
                        503, f"too many connections (limit {max_connections}); retry later", 1
                    )
                )
                transport.close()
                return
            self._arm(header_timeout, 408, "no request within the header timeout")

        def _evict_idle(self) -> bool:
            """Close the longest-idle connection that is between requests."""
            idle = [
                c
                for c in self.connections
                if c is not self
                and isinstance(c, GuardedHttpProtocol)
                and (c.cycle is None or c.cycle.response_complete)
                and not c._header_bytes
                and not c.transport.is_closing()
            ]
            for c in sorted(idle, key=lambda c: c.last_active):
                # Bytes the loop has not read yet are a request under way: a loop that accepts
                # a burst of connections makes them all before reading any of them.
                if _unread_bytes(c.transport):
                    continue
                c.transport.close()
                self.connections.discard(c)
                return True
            return False

        def shutdown(self) -> None:
            """The server stops (uvicorn's call): see the module's docstring, "Shutdown"."""
            self._closing = True
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.keep_alive = False  # finishes, then closes
                return
            if self._header_bytes or _unread_bytes(self.transport):
                return  # a request under way: it is answered (keep-alive off), then closed
            self._disarm()
            self._timer = self.loop.call_later(linger, self._linger_over)

        def _linger_over(self) -> None:
            self._timer = None
            if not self._header_bytes and not _unread_bytes(self.transport):
                self.transport.close()

        def eof_received(self) -> None:
            self._peer_closed = True
            super().eof_received()  # None: the transport closes itself

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._send_timer is not None:
                self._send_timer.cancel()
            super().connection_lost(exc)
            # uvicorn marks only `self.cycle`, the last request parsed; with pipelining the one
            # running is older, and would write to the closed transport (uvloop raises).
            pending = [c for c in self._unanswered if not c.response_complete]
            for cycle in pending:
                cycle.disconnected = True
                cycle.message_event.set()
            self._unanswered.clear()
            self.pipeline.clear()  # queued requests never start on a closed connection
            if pending and (exc is not None or self._peer_closed):
                log.debug(
                    "client %s hung up with %d answer(s) pending", _peer(self.client), len(pending)
                )

        def data_received(self, data: bytes) -> None:
            self.last_active = time.monotonic()
            if self._in_headers:
                if not self._header_bytes:  # a request's first byte: its headers' clock starts
                    self._arm(header_timeout, 408, "request headers not received in time")
                # May include the start of a body; only counts while the headers are incomplete
                # after parsing, so at most one read past the limit is ever buffered.
                self._header_bytes += len(data)
            elif self._in_body:
                self._arm(body_timeout, 408, "request body not received in time")
            super().data_received(data)
            if (
                self._in_headers
                and self._header_bytes > max_header
                and not self.transport.is_closing()
            ):
                self._reject_header()

        def _reject_header(self) -> None:
            self._disarm()
            self.transport.write(
                _raw_response(431, f"request headers exceed {max_header} bytes (MAX_HEADER_BYTES)")
            )
            self.transport.close()

        # Parser callbacks

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._header_bytes = 0
            length = dict(self.headers).get(b"content-length")
            chunked = any(
                n == b"transfer-encoding" and b"chunked" in v.lower() for n, v in self.headers
            )
            self._in_body = chunked or (length is not None and length.strip() not in (b"", b"0"))
            if self._in_body:
                self._arm(body_timeout, 408, "request body not received in time")
            else:
                self._disarm()
            before = self.cycle
            super().on_headers_complete()
            if self.cycle is not None and self.cycle is not before:  # not a WebSocket upgrade
                self._unanswered.append(self.cycle)
                if self._closing:
                    self.cycle.keep_alive = False

        def on_message_complete(self) -> None:
            self._in_body = False
            self._disarm()
            self._in_headers, self._header_bytes = True, 0  # what follows is the next request
            super().on_message_complete()

        def on_response_complete(self) -> None:
            self.last_active = time.monotonic()
            while self._unanswered and self._unanswered[0].response_complete:
                self._unanswered.popleft()
            super().on_response_complete()

        # Flow control: the client must read what we send

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._send_timer is None:
                self._send_timer = self.loop.call_later(send_timeout, self._send_expired)

        def resume_writing(self) -> None:
            if self._send_timer is not None:
                self._send_timer.cancel()
                self._send_timer = None
            super().resume_writing()

        def _send_expired(self) -> None:
            self._send_timer = None
            log.info("closing a connection from %s: it did not read its answer", _peer(self.client))
            self.transport.abort()  # drops the buffered answer
            self.loop.call_later(0.1, release_memory)

    class HttpProtocol(GuardedHttpProtocol, CoalescingWrites):
        """The guards, then the write coalescing, then uvicorn's protocol (in that MRO order)."""

    return HttpProtocol


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "unknown"


def _unread_bytes(transport: asyncio.BaseTransport) -> int:
    """Bytes the kernel holds for this connection that the event loop has not read yet (0 where
    it cannot tell: no socket, or no FIONREAD on this platform)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        import fcntl
        import termios

        pending = array.array("i", [0])
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, pending)
    except (ImportError, AttributeError, OSError, ValueError):
        return 0
    return int(pending[0])


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard limit: every connection is a descriptor."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return int(target)
        except (ValueError, OSError):
            pass
    return int(soft)
