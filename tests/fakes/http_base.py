"""What the fake services share: a threaded HTTP server on 127.0.0.1 (a free port) served from a daemon thread."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self


class ThreadedFake:
    """Base of a fake service: ``start()`` / ``stop()`` or a context manager; :attr:`port` once started.

    Subclasses return their request handler class from :meth:`handler_class`; each started server gets a subclass of
    it whose ``fake`` attribute is the service object, so handlers reach the service's state and fault scripts."""

    thread_name: ClassVar[str] = "fake-http"

    _httpd: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def start(self) -> Self:
        bound = type("Handler", (self.handler_class(),), {"fake": self})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), bound, bind_and_activate=False)
        httpd.daemon_threads = True
        httpd.request_queue_size = 1024  # benchmarks open hundreds of connections at once
        httpd.allow_reuse_address = True
        httpd.server_bind()
        httpd.server_activate()
        self._httpd = httpd
        # a short poll interval: stop() returns within 50 ms
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=self.thread_name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
