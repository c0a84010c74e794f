"""A small TCP proxy between the box and its broker that can cut and stall the link.

`cut()` closes every connection at once (a dropped LTE link: both ends see a reset);
`stall(seconds)` stops moving bytes in either direction, new connections included, and
then lets them flow again (a link that stays up but carries nothing, the case where only
timeouts notice). It forwards bytes as they are, so TLS runs end to end through it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class TcpProxy:
    """Listens on 127.0.0.1:`port` (0: a free one) and forwards to `target_port`."""

    def __init__(self, target_port: int, port: int = 0):
        self.target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self.connections = 0
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._flowing.wait()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
                self.connections += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(source, sink)

    def _drop(self, *sockets: socket.socket) -> None:
        with self._lock:
            for sock in sockets:
                self._sockets.discard(sock)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def cut(self) -> None:
        """Close every open connection now (the peers see their link drop)."""
        with self._lock:
            open_now = list(self._sockets)
        self._drop(*open_now)

    def stall(self, seconds: float) -> None:
        """Carry nothing for `seconds` (connections stay open), then flow again."""
        self._flowing.clear()
        try:
            time.sleep(seconds)
        finally:
            self._flowing.set()

    def close(self) -> None:
        """Stop listening and close every connection."""
        self._closed = True
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut()
