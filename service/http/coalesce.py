"""One write per response: each response's head goes out with the start of its body.

uvicorn's httptools protocol writes a response's head (status line and headers) and its body
apart: two sends per request, the largest cost left on the event loop. `CoalescingWrites` puts a
`HeadWithBody` between each request's cycle and the connection's transport; it holds a head
that announces a Content-Length until the body's first write, then writes both in one writev.

This is a throughput concern only, apart from the connection guards (service/http/
connections.py), which compose it into the one protocol class uvicorn is given. It touches
uvicorn's private API in one place: the `transport` attribute of the `RequestResponseCycle` that
`HttpToolsProtocol.on_headers_complete` creates (see the uvicorn pin in pyproject.toml).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeadWithBody:
    """One response's transport: holds a head that announces a Content-Length until the body's
    first write, then writes both at once. Interim (1xx) and chunked heads go out at once.

    Once the transport is closing nothing more is written: nothing written after close()
    belongs on the wire, and uvloop raises RuntimeError on a write to a closed handle (a client
    that hung up would cost the app a traceback)."""

    __slots__ = ("_head", "_started", "_transport")

    def __init__(self, transport: asyncio.Transport, method: str) -> None:
        self._transport = transport
        self._head: bytes | None = None
        self._started = method == "HEAD"  # a HEAD answer has no body to wait for

    def write(self, data: bytes) -> None:
        if self._transport.is_closing():
            self._head = None
            return
        head = self._head
        if head is not None:
            self._head = None
            self._transport.writelines((head, data))
        elif self._started or data[9:10] == b"1":  # the body, or an interim "HTTP/1.1 1xx"
            self._transport.write(data)
        else:  # the response's head (uvicorn writes it first, names in lower case)
            self._started = True
            if b"\r\ncontent-length:" in data:
                self._head = data
            else:  # chunked: its body may be slow to come
                self._transport.write(data)

    def close(self) -> None:
        if self._head is not None:
            if not self._transport.is_closing():
                self._transport.write(self._head)
            self._head = None
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


class CoalescingWrites(HttpToolsProtocol):
    """Composable part of an HttpToolsProtocol subclass: every request's cycle writes through
    its own HeadWithBody. Put it after the other parts in the bases, so that their
    on_headers_complete runs first and the cycle exists when this one installs the wrapper."""

    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not before:  # no new cycle: a WebSocket upgrade
            cycle.transport = HeadWithBody(  # type: ignore[assignment]
                self.transport, self.scope["method"]
            )
