"""The HTTPS server: cheroot, in-process, handing request bodies to the app as a stream.

cheroot reads the socket as the application asks for it and never spools a
request body to a temporary file, which keeps plaintext footage off the disk.
"""

from __future__ import annotations

import io
import ssl
import threading

from cheroot import wsgi
from cheroot.makefile import StreamReader, StreamWriter
from cheroot.server import HeaderReader, HTTPConnection, HTTPRequest
from cheroot.ssl.builtin import BuiltinSSLAdapter

from edgebox.lowlevel.tls_records import Read, record_reader
from edgebox.web import create_app

BULK_READ = 64 << 10


class BulkStreamReader(StreamReader):
    """cheroot's socket reader, with large reads done straight into one buffer.

    cheroot's reader is pure Python (_pyio): for a 1 MiB read it allocates a zeroed 1 MiB
    buffer for every TLS record (16 KiB) it receives, then joins the pieces. Footage bodies
    are read in large blocks, so those take this path instead: what is buffered first, then
    `readinto` the rest of one preallocated buffer. Small reads (headers, chunk sizes) are
    unchanged, so `has_data()` and keep-alive behave as before.
    """

    def read(self, size=-1):
        """Read up to `size` bytes, blocking until that many arrived or the peer closed."""
        if size is None or size < BULK_READ:
            return super().read(size)
        with self._read_lock:
            out = bytearray(size)
            view = memoryview(out)
            buffered = len(self._read_buf) - self._read_pos
            got = min(buffered, size)
            view[:got] = self._read_buf[self._read_pos : self._read_pos + got]
            self._read_pos += got
            read = _record_reader(self.raw)
            try:
                while got < size:
                    count = read(size - got, view[got:])
                    if not count:
                        break
                    got += count
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                pass  # the client closed: return what arrived, as SSLSocket.recv_into does
            view.release()
        self.bytes_read += got
        del out[got:]
        return out


def _record_reader(raw) -> Read:
    """One C call per TLS record for a body read (`edgebox.lowlevel.tls_records`); the raw stream's
    `readinto` where its socket is not at hand."""
    sock = getattr(raw, "_sock", None)
    if sock is None:
        return lambda nbytes, buffer: raw.readinto(buffer)
    return record_reader(sock)


def _streams(sock, mode="r", bufsize=io.DEFAULT_BUFFER_SIZE):
    """cheroot's makefile(), with the bulk reader for reading."""
    if "r" in mode:
        return BulkStreamReader(sock, mode, bufsize)
    return StreamWriter(sock, mode, bufsize)


# Headers that carry one value: a second copy makes the request ambiguous (which offset,
# which length, which checksum?), so it is refused rather than the last copy silently winning.
SINGLE_VALUE_HEADERS = frozenset(
    name.encode()
    for name in (
        "Authorization",
        "Content-Length",
        "Content-Type",
        "Host",
        "Transfer-Encoding",
        "Tus-Resumable",
        "Upload-Checksum",
        "Upload-Defer-Length",
        "Upload-Length",
        "Upload-Metadata",
        "Upload-Offset",
        "X-Http-Method-Override",
    )
)


class _OneCopyEach(dict):
    """cheroot's header dict, refusing a second copy of a single-value header (cheroot would
    keep the last one): cheroot answers the ValueError with 400 Bad Request."""

    def __setitem__(self, key: bytes, value: bytes) -> None:
        if key in SINGLE_VALUE_HEADERS and key in self:
            raise ValueError(f"{key.decode('latin-1')} given more than once")
        super().__setitem__(key, value)


class _StrictHeaderReader(HeaderReader):
    """cheroot's header reader over a `_OneCopyEach` dict."""

    def __call__(self, rfile, hdict=None):
        """Read the headers into `hdict` (a new dict if None); 400 on a duplicate."""
        strict = _OneCopyEach()
        super().__call__(rfile, strict)
        if hdict is None:
            return dict(strict)
        hdict.update(strict)
        return hdict


class _Request(HTTPRequest):
    """cheroot's request with the strict header reader."""

    header_reader = _StrictHeaderReader()


class _Connection(HTTPConnection):
    """A cheroot connection whose request bodies are read by BulkStreamReader."""

    RequestHandlerClass = _Request

    def __init__(self, server, sock, makefile=None):
        super().__init__(server, sock, makefile=_streams)


class WebServer:
    """Serves the box's Flask app on a thread; `stop()` shuts it down."""

    def __init__(self, box, address: tuple[str, int]):
        self.box = box
        self.app = create_app(box)
        self.server = wsgi.Server(
            address,
            self.app,
            numthreads=box.config.server.threads,
            server_name="edgebox",
            timeout=60,
        )
        self.server.max_request_body_size = 0
        self.server.ConnectionClass = _Connection
        if box.config.server.tls:
            self.server.ssl_adapter = BuiltinSSLAdapter(
                str(box.keys.tls_cert), str(box.keys.tls_key)
            )
        self._thread: threading.Thread | None = None

    def start(self) -> WebServer:
        """Bind and serve in a background thread; returns once the socket listens."""
        self.server.prepare()
        self._thread = threading.Thread(target=self.server.serve, name="web", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        """The server's base URL (with the actual port when 0 was asked for)."""
        host, port = self.server.bind_addr[:2]
        scheme = "https" if self.box.config.server.tls else "http"
        if host in ("0.0.0.0", "::", ""):  # noqa: S104
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{port}"

    def stop(self) -> None:
        """Stop accepting and wait for the worker threads."""
        self.server.stop()
        if self._thread:
            self._thread.join(timeout=10)
