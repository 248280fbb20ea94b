"""The end of the HTTP drain, at the listening sockets: no connection the kernel has already
accepted is reset by the listener's close.

Closing a listening socket resets every connection waiting in its accept queue, and their clients
have usually sent their request by then: they cannot tell whether it ran. So before the close,
`close_gently` stops the kernel from completing new handshakes on the listener (a socket filter
that drops every packet to it: a client connecting now retries its SYN and, once the listener is
gone, is refused: unambiguous), lets the event loop accept what the accept queue holds (each is
answered as any other connection: service/http/connections.py lets idle connections linger for
a request under way), and only then lets uvicorn close the listener.

Linux only (`SO_ATTACH_FILTER`, and `TCP_INFO` for the queue's length); elsewhere the listener
closes as uvicorn closes it, and a client racing the close may see a reset (docs/reliability.md
says what to do then).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import socket
import struct
import sys
import time
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("coordconv.http")
SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>
# One classic BPF instruction: BPF_RET | BPF_K with 0, "keep 0 bytes": drop every packet.
_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)
_TCPI_UNACKED = 24  # struct tcp_info: for a listener, the length of its accept queue


def _stop_handshakes(sock: Any) -> bool:
    program = ctypes.create_string_buffer(_DROP_ALL)
    fprog = struct.pack("HL", 1, ctypes.addressof(program))  # struct sock_fprog
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except (OSError, ValueError):
        return False
    return True


def _queued(sock: Any) -> int:
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except (OSError, ValueError, AttributeError):
        return 0
    return int(struct.unpack_from("I", info, _TCPI_UNACKED)[0])


async def close_gently(servers: Iterable[asyncio.Server], limit_s: float) -> int:
    """Stop new handshakes on every listener of `servers`, then wait (at most `limit_s`) until
    the event loop has accepted what their accept queues hold. Returns how many were waiting."""
    if not sys.platform.startswith("linux"):
        return 0
    listeners = [
        s
        for server in servers
        for s in server.sockets
        if s.type == socket.SOCK_STREAM and s.family in (socket.AF_INET, socket.AF_INET6)
    ]
    listeners = [s for s in listeners if _stop_handshakes(s)]
    waiting = sum(_queued(s) for s in listeners)
    deadline = time.monotonic() + limit_s
    while any(_queued(s) for s in listeners) and time.monotonic() < deadline:
        await asyncio.sleep(0.002)  # the loop accepts them meanwhile
    left = sum(_queued(s) for s in listeners)
    if left:
        log.warning("%d connection(s) still queued when the listener closed", left)
    return waiting
