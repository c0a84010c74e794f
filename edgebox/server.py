"""The HTTPS server: cheroot, in-process, handing request bodies to the app as a stream.

cheroot reads the socket as the application asks for it and never spools a
request body to a temporary file, which keeps plaintext footage off the disk.
"""

from __future__ import annotations

import threading

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from edgebox.web import create_app


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
