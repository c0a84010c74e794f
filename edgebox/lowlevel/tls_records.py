"""Reading a socket's bytes straight into a buffer with one C call per TLS record.

`SSLSocket.recv_into` returns one TLS record (16 KiB at most) per call through two or three
Python-level calls and checks (`socket.SocketIO.readinto` adds another), so a 1 MiB body or
MQTT payload costs some 64 × 4 Python frames. Calling the SSL object's own `read` does the
same work (timeouts included: it waits on the socket's timeout itself) in one C call.
"""

from __future__ import annotations

from collections.abc import Callable

Read = Callable[[int, memoryview], int]


def record_reader(sock) -> Read:
    """`read(nbytes, buffer)` for `sock`, returning how many bytes it put into `buffer`.

    For a TLS socket that is its SSL object's `read`, which raises `ssl.SSLEOFError` or
    `ssl.SSLZeroReturnError` (both OSErrors) where `recv_into` would return 0 at the end of
    the stream; for a plain socket, `recv_into`.
    """
    sslobj = getattr(sock, "_sslobj", None)
    if sslobj is not None:
        return sslobj.read
    return lambda nbytes, buffer: sock.recv_into(buffer, nbytes)
