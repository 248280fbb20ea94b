"""The end of the HTTP drain, at the listening sockets: no connection the kernel has already
accepted is reset by the listener's close.

Closing a listening socket resets every connection waiting in its accept queue, and their clients
have usually sent their request by then: they cannot tell whether it ran. So before the close,
`close_gently` stops the kernel from starting new handshakes on the listener (a socket filter
that drops every packet opening one, a SYN without ACK: a client connecting now retries its SYN
and, once the listener is gone, is refused: unambiguous), lets the handshakes already answered
finish, lets the event loop accept what the accept queue holds (each is answered as any other
connection: service/http/connections.py lets idle connections linger for a request under way),
and only then lets uvicorn close the listener.

The filter drops SYNs only. One that dropped every packet (as before) also dropped the last ACK
of a handshake the kernel had already answered, and the request that follows it: the client had
its connection, sent its request, and was reset when the listener closed (1 ReadError in 498
requests of the 16-client, 2-worker drain test in a CI run). A connection accepted after the
filter is attached inherits it, which is harmless now: an open connection never receives a bare
SYN.

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
# Classic BPF over the TCP header (a TCP socket's filter sees the segment from its header on):
# load the flags byte, keep SYN and ACK, and drop the segment ("keep 0 bytes") when only SYN is
# set; keep everything else whole.
_DROP_SYN = b"".join(
    struct.pack("HBBI", code, jt, jf, k)
    for code, jt, jf, k in (
        (0x30, 0, 0, 13),  # BPF_LD | BPF_B | BPF_ABS: A = byte 13, the flags
        (0x54, 0, 0, 0x12),  # BPF_ALU | BPF_AND | BPF_K: A &= SYN | ACK
        (0x15, 0, 1, 0x02),  # BPF_JMP | BPF_JEQ | BPF_K: A == SYN? next : skip one
        (0x06, 0, 0, 0),  # BPF_RET | BPF_K: drop
        (0x06, 0, 0, 0xFFFFFFFF),  # BPF_RET | BPF_K: keep all of it
    )
)
_HANDSHAKE_S = 0.02  # a handshake answered just before the filter completes within this (LAN)
_TCPI_UNACKED = 24  # struct tcp_info: for a listener, the length of its accept queue


def _stop_handshakes(sock: Any) -> bool:
    program = ctypes.create_string_buffer(_DROP_SYN, len(_DROP_SYN))
    fprog = struct.pack("HL", len(_DROP_SYN) // 8, ctypes.addressof(program))  # sock_fprog
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
    deadline = time.monotonic() + limit_s
    if listeners:
        await asyncio.sleep(min(_HANDSHAKE_S, limit_s))  # their last ACKs arrive meanwhile
    waiting = sum(_queued(s) for s in listeners)
    while any(_queued(s) for s in listeners) and time.monotonic() < deadline:
        await asyncio.sleep(0.002)  # the loop accepts them meanwhile
    left = sum(_queued(s) for s in listeners)
    if left:
        log.warning("%d connection(s) still queued when the listener closed", left)
    return waiting
